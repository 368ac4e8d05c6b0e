"""`imgclf study paper` end to end on the smoke budget, on scikit-learn's digits (real 8x8 scans, seconds)."""

from __future__ import annotations

import json
from collections import Counter
from contextlib import contextmanager

import pytest

from imgclf.cli import main
from imgclf.errors import ImgclfError
from imgclf.evaluate import evaluation
from imgclf.study import ABLATIONS, study_paper

NAMES = ["paper-cnn", "cnn-enhanced", *ABLATIONS, "alexnet", "resnet18", "mobilenet_v3_small", "mnist-fast",
         "mnist-best"]


@contextmanager
def counting():
    """Count the evaluation's inference passes and its latency timings by run (the real functions run)."""
    calls = {"inference": 0, "timed": Counter()}
    logits, efficiency = evaluation.predict_logits, evaluation.efficiency

    def counted_logits(*args, **kwargs):
        calls["inference"] += 1
        return logits(*args, **kwargs)

    def counted_efficiency(model, meta, folder, *args, **kwargs):
        calls["timed"][folder.name] += 1
        return efficiency(model, meta, folder, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluation, "predict_logits", counted_logits)
        patch.setattr(evaluation, "efficiency", counted_efficiency)
        yield calls


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    with counting() as calls:
        paper = study_paper(out, budget="smoke", dataset="digits", command="imgclf study paper --budget smoke")
    return out, paper, calls


def test_each_model_is_predicted_and_timed_once_for_its_report_and_the_comparison(study):
    out, _, calls = study
    assert calls == {"inference": len(NAMES), "timed": Counter(NAMES)}
    result = json.loads((out / "paper.json").read_text())
    compared = {e["name"]: e for e in json.loads((out / "compare.json").read_text())["leaderboard"]}
    for name in NAMES:  # PAPER.md (from the reports) and compare.html show the same latency
        assert result["reports"][name]["efficiency"]["latency_ms"] == compared[name]["latency_ms"]


def test_the_study_writes_every_table_from_its_runs(study):
    out, paper, _ = study
    result = json.loads((out / "paper.json").read_text())
    assert [e["name"] for e in result["entries"]] == NAMES
    for name in NAMES:  # every row is a real run directory with its evaluation and robustness
        assert json.loads((out / "runs" / name / "summary.json").read_text())["stopped"] == "done"
        files = {p.name for p in (out / "runs" / name).iterdir()}
        assert {"report.json", "robustness.json", "model.safetensors"} <= files
    assert result["table_ii"][-1] == {"layer": "total", "type": "", "output": [], "params": 421_642}
    assert len(result["table_iii"]["table"]) == 4 and result["table_iii"]["trials"] == 2
    pairs = {(p["a"], p["b"]) for p in result["compare"]["pairs"]}
    assert {("cnn-enhanced", name) for name in ABLATIONS} | {("alexnet", "paper-cnn")} <= pairs
    text = paper.read_text()
    for heading in ("## The answer", "## Table II", "## Table III", "## Table IV", "## McNemar",
                    "## Loss curves", "## Confusion matrices"):
        assert heading in text
    assert "imgclf study paper --budget smoke" in text and "PyTorch" in text  # how, where and with what
    for name in NAMES:  # Table IV has a row per model, with its measured accuracy
        report = result["reports"][name]
        label = next(e["label"] for e in result["entries"] if e["name"] == name)
        assert f"| {label} |" in text and f"{report['accuracy']:.4f} [" in text
    for arch in ("alexnet", "resnet18", "mobilenet_v3_small"):  # weights or not, the label says which
        label = next(e["label"] for e in result["entries"] if e["name"] == arch)
        assert ("from scratch" in label) != ("ImageNet weights" in label)
    for picture in ("curves.png", "confusions.png"):
        assert (out / "figures" / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table>" in (out / "paper.html").read_text()


def test_running_it_again_skips_finished_work_and_resumes_a_stopped_run(study):
    out, _, _ = study
    runs = out / "runs"
    before = {name: (runs / name / "model.safetensors").stat().st_mtime_ns for name in NAMES}
    reports = {name: (runs / name / "report.json").stat().st_mtime_ns for name in NAMES}
    (runs / "paper-cnn" / "summary.json").unlink()  # as if the study had been stopped at the end of this run
    with counting() as calls:
        assert main(["study", "paper", "--budget", "smoke", "--dataset", "digits", "--out", str(out), "-q"]) == 0
    assert calls == {"inference": 0, "timed": Counter()}  # the same weights and images: the reports are kept
    assert {name: (runs / name / "model.safetensors").stat().st_mtime_ns for name in NAMES} == before
    assert {name: (runs / name / "report.json").stat().st_mtime_ns for name in NAMES} == reports
    assert json.loads((runs / "paper-cnn" / "summary.json").read_text())["stopped"] == "done"


def test_bad_study_settings(tmp_path):
    with pytest.raises(ImgclfError, match="--budget must be one of cpu, smoke"):
        study_paper(tmp_path, budget="huge")
    with pytest.raises(ImgclfError, match="the recipes"):
        study_paper(tmp_path, budget="smoke", recipes=tmp_path)
