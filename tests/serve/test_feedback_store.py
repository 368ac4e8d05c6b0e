"""The feedback store on both of its databases: a SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serving_helpers import encode
from sqlalchemy import select

from imgclf.errors import ImgclfError
from imgclf.serve.feedback import (
    KEPT,
    MIGRATIONS,
    SEEN,
    FeedbackStore,
    Kept,
    Stored,
    StoreError,
    StoreFull,
    engine_for,
    export,
    stats,
)

PNG = encode(np.full((28, 28), 200, dtype=np.uint8))


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> str:
    """A new feedback database: a SQLite file's path or a PostgreSQL URL."""
    return str(tmp_path / "feedback.db") if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def test_rows_idempotency_stats_and_export_on_either_database(database, tmp_path):
    store = FeedbackStore(database)
    try:
        first, stored = store.add("3", PNG, predicted="8", model_version="v1", idempotency_key="a")
        assert stored.new and stored.label == "3"
        assert store.add("3", PNG, predicted="8", idempotency_key="a") == (first, Stored(False, "3", "idempotency_key"))
        assert store.add("5", PNG, idempotency_key="a")[1].label == "3"  # the app answers 409 on this
        for i in range(8):
            store.add(str(i % 2), PNG, predicted="1", inverted=i == 0)  # no key: every one is a new row
    finally:
        store.close()
    numbers = stats(database)
    assert numbers["feedback"] == 9 and numbers["per_label"] == {"0": 4, "1": 4, "3": 1}
    assert numbers["confirmed"] == 4 and numbers["confusions"][0] == {"predicted": "1", "label": "0", "count": 4}
    assert export(database, tmp_path / "out") == 9
    assert sorted(p.parent.name for p in (tmp_path / "out").rglob("*.png")).count("0") == 4
    FeedbackStore(database).close()  # opening again migrates nothing and keeps every row
    assert stats(database)["feedback"] == 9


def test_one_correction_per_prediction_and_a_cap_on_the_rows_and_bytes(database):
    store = FeedbackStore(database, max_rows=3, max_bytes=10 * len(PNG))
    try:
        first, _ = store.add("3", PNG, prediction_id="p")
        assert store.add("5", PNG, prediction_id="p", idempotency_key="other") == (first, Stored(False, "3",
                                                                                                  "prediction_id"))
        store.add("1", PNG, idempotency_key="k")
        store.add("2", PNG)
        with pytest.raises(StoreFull, match="holds 3 corrections"):
            store.add("2", PNG)
        assert store.add("1", PNG, idempotency_key="k")[1] == Stored(False, "1", "idempotency_key")  # a replay: fine
    finally:
        store.close()
    assert stats(database)["feedback"] == 3  # the refused row was rolled back
    reopened = FeedbackStore(database, max_bytes=3 * len(PNG) + 10)  # counts what is there when it opens
    try:
        with pytest.raises(StoreFull, match="MiB of images"):
            reopened.add("4", PNG)
    finally:
        reopened.close()


def test_concurrent_writers_lose_nothing_and_share_idempotency_keys(database):
    stores = [FeedbackStore(database) for _ in range(2)]  # two replicas' stores, each with its own connections
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: stores[i % 2].add(str(i % 10), PNG, idempotency_key=f"k{i // 2}"),
                                    range(200)))
    finally:
        for store in stores:
            store.close()
    assert sum(stored.new for _, stored in results) == 100  # each key sent twice, once to each store
    assert len({row for row, _ in results}) == 100 and stats(database)["feedback"] == 100


def test_a_database_from_before_schema_versions_is_migrated_in_place(tmp_path):
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as db:  # the table exactly as imgclf 0.1 created it, with a row
        db.executescript("""
            CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, label TEXT NOT NULL,
                predicted TEXT, prediction_id TEXT, model_version TEXT, image_sha256 TEXT NOT NULL,
                image BLOB NOT NULL, inverted INTEGER NOT NULL DEFAULT 0, idempotency_key TEXT UNIQUE);
            INSERT INTO feedback (created, label, image_sha256, image, idempotency_key)
                VALUES (1.0, '7', 'x', X'00', 'old');
            INSERT INTO feedback (created, label, prediction_id, image_sha256, image) VALUES
                (2.0, '3', 'p', 'x', X'00'), (3.0, '5', 'p', 'x', X'00'), (4.0, '3', 'p', 'x', X'00'),
                (5.0, '1', 'q', 'x', X'00');""")  # p corrected three times, as servers before 2 stored it
    store = FeedbackStore(old)
    try:
        assert store.add("7", PNG, idempotency_key="old")[1].new is False  # the old row and its key are kept
        assert store.add("2", PNG)[1].new
        assert store.add("9", PNG, prediction_id="p")[1] == Stored(False, "3", "prediction_id")
    finally:
        store.close()
    with sqlite3.connect(old) as db:
        versions = db.execute("SELECT version FROM imgclf_schema").fetchall()
        assert versions == [(n,) for n in range(1, len(MIGRATIONS) + 1)]  # each step recorded
        assert db.execute("SELECT COUNT(*) FROM feedback").fetchone() == (4,)
        assert db.execute("SELECT label FROM feedback WHERE prediction_id = 'p'").fetchall() == [("3",)]  # the first
        assert db.execute("SELECT created, label FROM feedback_repeats ORDER BY id").fetchall() == [(3.0, "5"),
                                                                                                    (4.0, "3")]


def test_a_newer_schema_is_refused(database):
    FeedbackStore(database).close()
    store = FeedbackStore(database)
    with store.engine.begin() as db:
        db.exec_driver_sql(f"INSERT INTO imgclf_schema (version, applied) VALUES ({len(MIGRATIONS) + 1}, 0)")
    store.close()
    with pytest.raises(ImgclfError, match="newer than this imgclf knows"):
        FeedbackStore(database)


def test_bad_database_targets_get_one_clear_sentence(tmp_path, postgres_server):
    with pytest.raises(ImgclfError, match="must be SQLite or PostgreSQL, not mysql"):
        FeedbackStore("mysql://user@localhost/feedback")
    closed = postgres_server.rsplit(":", 1)[0] + ":1/feedback"  # nothing listens on port 1
    with pytest.raises(StoreError, match=r"cannot open the feedback database postgresql\+psycopg://imgclf@"):
        FeedbackStore(closed)
    with pytest.raises(StoreError) as caught:
        FeedbackStore(closed.replace("imgclf@", "imgclf:s3cret@"))
    assert "imgclf:***@" in str(caught.value) and "s3cret" not in str(caught.value)  # passwords stay out of logs
    (tmp_path / "notes.db").write_text("not a database")
    with pytest.raises(ImgclfError, match="as an imgclf feedback database"):
        stats(tmp_path / "notes.db")
    with pytest.raises(ImgclfError, match="there is no feedback database"):
        export(tmp_path / "missing.db", tmp_path / "out")


def test_cli_reads_a_postgresql_store(postgres_url, tmp_path):
    store = FeedbackStore(postgres_url)
    store.add("4", PNG, predicted="9")
    store.close()
    shown = subprocess.run([sys.executable, "-m", "imgclf", "feedback", "stats", postgres_url], capture_output=True,
                           text=True)
    assert shown.returncode == 0 and "1 feedback rows" in shown.stdout, shown.stderr


def _kept(i: int, margin: float = 0.5, unknown: float | None = None) -> Kept:
    return Kept(f"p{i}", PNG, str(i % 10), 0.6, margin, unknown, "v1", False)


def _sample(database: str) -> tuple[dict[int, str], int]:
    """The kept sample's slot -> prediction_id, and how many images were offered to it."""
    engine = engine_for(database)
    try:
        with engine.connect() as db:
            return dict(db.execute(select(KEPT.c.slot, KEPT.c.prediction_id)).all()), db.execute(
                select(SEEN.c.seen)).scalar()
    finally:
        engine.dispose()


def test_the_kept_sample_stays_bounded_and_uniform_with_concurrent_writers(database):
    stores = [FeedbackStore(database) for _ in range(2)]  # two replicas' stores, each with its own connections
    try:
        with ThreadPoolExecutor(4) as pool:  # 160 images in batches of 8, from both stores at once
            taken = sum(pool.map(lambda b: stores[b % 2].keep([_kept(8 * b + i) for i in range(8)], 10), range(20)))
    finally:
        for store in stores:
            store.close()
    slots, seen = _sample(database)
    assert sorted(slots) == list(range(10)) and seen == 160 and taken >= 10
    # algorithm R keeps an early image with probability 10/160 each: all ten from the last half would be (1/2)^10
    assert min(int(p[1:]) for p in slots.values()) < 80
    capped = FeedbackStore(database, max_bytes=1)  # a restart with no room for more image bytes
    try:
        assert capped.keep([_kept(1000)], 200) == 0  # its slot (160) is free, but its bytes would pass the cap
        capped.keep([_kept(1001)], 4)  # then a smaller sample
    finally:
        capped.close()
    assert sorted(_sample(database)[0]) == [0, 1, 2, 3]
