"""`imgclf predict` on real batches: folders (recursive), patterns and files, table/JSON/CSV, a file of results,
bad files reported on their own line while the rest are classified, and the exit status saying so."""

from __future__ import annotations

import csv
import io
import json

from PIL import Image

from imgclf.cli import main
from imgclf.predict import predict_files


def _digits(mnist, root):
    """Seven real MNIST test digits in nested folders, a hidden one, a broken PNG and a text file."""
    paths = []
    for i in range(7):
        paths.append(root / ("deep/er" if i % 2 else "top") / f"{i}.png")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mnist.split("test").images[i, 0].numpy()).save(paths[-1])
    Image.fromarray(mnist.split("test").images[7, 0].numpy()).save(root / "top" / ".hidden.png")
    (root / "top" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "top" / "notes.txt").write_text("left out: not an image suffix")
    return sorted(paths, key=lambda p: p.parts)


def test_predict_folders_patterns_formats_and_bad_files(mnist, mnist_run, tmp_path, capsys):
    new = tmp_path / "new"
    good = _digits(mnist, new)
    expected = {str(p.path): p.top for p in predict_files(mnist_run, good, top=2)}

    assert main(["predict", str(mnist_run), str(new), "--top", "2", "--batch-size", "3"]) == 1
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 8 and "1 of 8 images could not be classified" in err  # 7 digits and the broken file
    broken = next(line for line in lines if "broken.png" in line)
    assert "error: cannot read image" in broken
    for line in lines:
        path, rest = line.split(": ", 1)
        if path in expected:
            assert rest == ", ".join(f"{label} {p:.3f}" for label, p in expected[path])

    assert main(["predict", str(mnist_run), str(new / "**" / "[0-9].png"), "--format", "json", "--out",
                 str(tmp_path / "p.json"), "--tta"]) == 0
    found = json.loads((tmp_path / "p.json").read_text())
    assert sorted(row["path"] for row in found) == sorted(expected) and all(row["error"] is None for row in found)
    assert all(len(row["top"]) == 3 for row in found) and "wrote 7 predictions" in capsys.readouterr().out

    assert main(["predict", str(mnist_run), str(good[0]), str(new / "top" / "broken.png"), "--format", "csv"]) == 1
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["path", "label_1", "probability_1", "label_2", "probability_2", "label_3", "probability_3",
                       "error"]
    assert rows[1][1] == expected[str(good[0])][0][0] and rows[1][-1] == ""
    assert rows[2][1:7] == [""] * 6 and "cannot read image" in rows[2][-1]

    assert main(["predict", str(mnist_run), str(new / "*.jpg")]) == 1
    assert "no file matches" in capsys.readouterr().err
