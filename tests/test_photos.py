"""A folder of real photos end to end, as the README's "Your own photos" section runs it: hymenoptera (ants and
bees of many sizes, with a stray GIF) through data info, the automatic recipe, train, evaluate, predict,
explain and export. Run once: every step reads the same run and the same decoded-image cache."""

from __future__ import annotations

import json
import logging

from conftest import SHARED
from imgclf.cli import main
from imgclf.training import recipe

HYMENOPTERA = SHARED / "hymenoptera"


def test_hymenoptera_from_data_info_to_export(tmp_path, monkeypatch, capsys, caplog):
    # offline whatever the machine: the recipe must not depend on whether a download would work here
    monkeypatch.setattr(recipe, "pretrained_available", lambda name: (False, "offline in this test"))
    source = f"folder:{HYMENOPTERA}"
    with caplog.at_level(logging.WARNING):
        assert main(["data", "info", source]) == 0
    assert caplog.text.count("imageNotFound.gif") == 1 and "GIF among 397 JPEG" in caplog.text
    assert "2 classes, 245 train, 153 val" in capsys.readouterr().out

    runs = tmp_path / "runs"
    assert main(["train", "--dataset", source, "--out", str(runs), "--name", "hym", "--epochs", "1",
                 "--data.num_workers", "0", "-q"]) == 0
    out = capsys.readouterr().out
    assert "photo-fast" in out and "3x64x64" in out and "offline in this test" in out and "245 train, 153 val" in out
    run = runs / "hym"

    assert main(["evaluate", str(run), "--resamples", "50", "--latency-runs", "3", "-q"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["split"] == "val" and report["samples"] == 153  # no test/ folder: scored on val/
    assert "val (153 images)" in capsys.readouterr().out

    images = sorted((HYMENOPTERA / "val" / "bees").glob("*.jpg"))[:3]
    assert main(["predict", str(run), *map(str, images), "--tta", "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("bees" in line and "ants" in line for line in lines)

    assert main(["explain", str(run), str(images[0]), "--out", str(tmp_path / "why"), "-q"]) == 0
    assert list((tmp_path / "why").glob("*.png"))

    assert main(["export", str(run), "--format", "onnx", "-q"]) == 0
    assert (run / "model.onnx").is_file() and "parity" in capsys.readouterr().out
