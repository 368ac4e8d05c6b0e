"""The remembered predictions: bounded by count and by bytes, shared by every connection to the file."""

from __future__ import annotations

import threading

from imgclf.serve.recent import Recent, Remembered


def test_recent_predictions_are_shared_and_bounded(tmp_path):
    path = tmp_path / "recent.db"
    writer, reader = Recent(path, keep=5, keep_bytes=10**6), Recent(path, keep=5, keep_bytes=10**6)
    writer.add([(f"p{i}", Remembered(bytes([i]) * 10, str(i), "v1", i % 2 == 0)) for i in range(8)])
    assert reader.get("p7") == Remembered(bytes([7]) * 10, "7", "v1", False)  # another connection sees it
    assert reader.get("p2") is None and reader.get("p3") is not None  # only the last 5 are kept
    threads = [threading.Thread(target=writer.add, args=([(f"t{n}", Remembered(b"x", "1", "v1", False))],))
               for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(reader.get(f"t{n}") for n in range(4))  # each thread has its own connection
    small = Recent(tmp_path / "small.db", keep=100, keep_bytes=250)
    small.add([(f"b{i}", Remembered(b"y" * 100, "1", "v1", False)) for i in range(4)])
    assert [small.get(f"b{i}") is not None for i in range(4)] == [False, False, True, True]  # 200 bytes of 400
