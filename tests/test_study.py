"""`imgclf study paper` end to end on the smoke budget, on scikit-learn's digits (real 8x8 scans, seconds)."""

from __future__ import annotations

import json

import pytest

from imgclf.cli import main
from imgclf.errors import ImgclfError
from imgclf.study import ABLATIONS, study_paper

NAMES = ["paper-cnn", "cnn-enhanced", *ABLATIONS, "alexnet", "resnet18", "mobilenet_v3_small", "mnist-fast",
         "mnist-best"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return out, study_paper(out, budget="smoke", dataset="digits", command="imgclf study paper --budget smoke")


def test_the_study_writes_every_table_from_its_runs(study):
    out, paper = study
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
    out, _ = study
    runs = out / "runs"
    before = {name: (runs / name / "model.safetensors").stat().st_mtime_ns for name in NAMES}
    reports = {name: (runs / name / "report.json").stat().st_mtime_ns for name in NAMES}
    (runs / "paper-cnn" / "summary.json").unlink()  # as if the study had been stopped at the end of this run
    assert main(["study", "paper", "--budget", "smoke", "--dataset", "digits", "--out", str(out), "-q"]) == 0
    assert {name: (runs / name / "model.safetensors").stat().st_mtime_ns for name in NAMES} == before
    assert {name: (runs / name / "report.json").stat().st_mtime_ns for name in NAMES} == reports
    assert json.loads((runs / "paper-cnn" / "summary.json").read_text())["stopped"] == "done"


def test_bad_study_settings(tmp_path):
    with pytest.raises(ImgclfError, match="--budget must be one of cpu, smoke"):
        study_paper(tmp_path, budget="huge")
    with pytest.raises(ImgclfError, match="the recipes"):
        study_paper(tmp_path, budget="smoke", recipes=tmp_path)
