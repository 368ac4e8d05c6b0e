"""A run travels: trained in one directory on a relative folder path, it evaluates, exports and serves from
another directory, and a copy of it on another path, with its data moved too, gives identical numbers."""

from __future__ import annotations

import json
import os
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from imgclf.cli import main
from imgclf.config import load_config
from imgclf.predict import predict_files
from serve.serving_helpers import serving

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (50, 60, 210)}


def _photos(root):
    """12 small noisy RGB images per colour class."""
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(rng.normal(colour, 60, size=(16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def _numbers(report: dict) -> tuple:
    return (report["accuracy"], report["macro"], report["confusion"], report["samples"], report["split"],
            report["confidence_intervals"]["accuracy"], report["log_loss"])


def _evaluate(run, *options) -> dict:
    assert main(["evaluate", str(run), "--resamples", "20", "--latency-runs", "2", "-q", *options]) == 0
    return json.loads((run / "report.json").read_text())


def test_a_run_evaluates_exports_and_serves_from_anywhere(tmp_path, monkeypatch, capsys):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    _photos(work / "photos")
    elsewhere.mkdir()
    monkeypatch.chdir(work)  # the dataset and the runs folder given as relative paths
    assert main(["train", "--dataset", "folder:photos", "--model", "cnn", "--epochs", "2", "--out", "runs",
                 "--name", "r", "--data.num_workers", "0", "--train.batch_size", "8", "-q"]) == 0
    run = work / "runs" / "r"
    assert load_config(run / "config.yaml").data.dataset == f"folder:{work / 'photos'}"
    recorded = json.loads((run / "data.json").read_text())
    assert recorded["root"] == str(work / "photos") and set(recorded["splits"]) == {"train", "val", "test"}
    assert recorded["splits"]["test"][0][0].count("/") == 1  # class/file, relative to the folder

    monkeypatch.chdir(elsewhere)
    first = _evaluate(run)
    assert main(["export", str(run), "--format", "onnx", "-q"]) == 0 and "parity" in capsys.readouterr().out

    # the run copied to another path, the data moved to another one: re-pointed, the numbers are the same
    copy, moved = tmp_path / "copy" / "r", tmp_path / "moved" / "pics"
    shutil.copytree(run, copy)
    shutil.move(work / "photos", moved)
    capsys.readouterr()
    assert main(["evaluate", str(copy), "-q"]) == 1
    error = capsys.readouterr().err
    assert f"{work / 'photos'} is not there" in error and "--data-dir" in error
    assert _numbers(_evaluate(copy, "--data-dir", str(moved))) == _numbers(first)
    assert _numbers(_evaluate(copy, "--data", f"folder:{moved}")) == _numbers(first)
    assert main(["export", str(copy), "--format", "onnx", "--data-dir", str(moved), "-q"]) == 0
    image = moved / "red" / "0.png"
    expected = predict_files(run, [image], top=3)[0].top
    with serving(copy) as url:
        answer = httpx.post(f"{url}/v1/predict", files={"file": image.read_bytes()}).json()
    assert [(t["label"], pytest.approx(t["probability"], abs=1e-6)) for t in answer["top"]] == expected
    assert main(["evaluate", str(copy), "--data", f"folder:{moved}", "--calibrate", "--resamples", "20",
                 "--latency-runs", "2", "-q"]) == 0  # fitted on the run's own val split, found at its new place
    assert main(["train", "--resume", str(copy), "--data-dir", str(moved), "-q"]) == 0

    # files changed or gone since training: counted, named, and nothing is scored on a different split
    test_files = [rel for rel, _, _ in recorded["splits"]["test"]]
    (moved / test_files[0]).unlink()
    Image.new("RGB", (16, 16)).save(moved / test_files[1])
    capsys.readouterr()
    assert main(["evaluate", str(copy), "--data-dir", str(moved), "-q"]) == 1
    error = capsys.readouterr().err
    assert f"1 of the {len(test_files)} test images the run recorded are missing" in error
    assert "and 1 changed" in error and test_files[0] in error and test_files[1] in error
    assert os.path.exists(copy / "report.json")  # what was saved before is kept
