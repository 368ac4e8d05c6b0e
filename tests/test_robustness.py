"""Corruptions, attacks and the robustness report, on real MNIST images and a small real run."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from imgclf.attacks import fgsm, pgd
from imgclf.cli import main
from imgclf.errors import ImgclfError
from imgclf.evaluate.compare import compare_runs
from imgclf.evaluate.evaluation import evaluate_run, robustness_record
from imgclf.evaluate.robustness_report import RobustnessReport
from imgclf.export import export_run
from imgclf.robustness import CORRUPTIONS, corrupt, measure_robustness, robustness
from imgclf.rundir import load_model, preprocess_of


@pytest.fixture(scope="module")
def pixels(mnist) -> torch.Tensor:
    """32 real MNIST test digits as float (B, 1, 28, 28) in [0, 1]."""
    return mnist.splits["test"].images[:32].float() / 255


@pytest.fixture(scope="module")
def run(tmp_path_factory, mnist_run):
    """This module's copy of the shared small MNIST run (robustness.json is written into it)."""
    return Path(shutil.copytree(mnist_run, tmp_path_factory.mktemp("robust") / "fast"))


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_is_seeded_keeps_the_tensor_and_grows_with_severity(name, pixels):
    changes = []
    for severity in range(1, 6):
        out = corrupt(pixels, name, severity, seed=3)
        assert out.shape == pixels.shape and out.dtype == pixels.dtype
        assert float(out.min()) >= 0 and float(out.max()) <= 1
        assert torch.equal(out, corrupt(pixels, name, severity, seed=3))
        changes.append(float((out - pixels).abs().mean()))
    assert all(a < b for a, b in itertools.pairwise(changes)), changes
    assert changes[0] > 0
    rgb = torch.rand(3, 3, 40, 32)  # any channels and size, not only MNIST's
    assert corrupt(rgb, name, 5).shape == rgb.shape


def test_random_corruptions_depend_on_the_seed(pixels):
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "elastic", "occlusion", "rotation"):
        assert not torch.equal(corrupt(pixels, name, 3, seed=0), corrupt(pixels, name, 3, seed=1)), name


def test_corruption_errors(pixels):
    with pytest.raises(ImgclfError, match=r"unknown corruption 'fog'; choose from gaussian_noise"):
        corrupt(pixels, "fog", 1)
    with pytest.raises(ImgclfError, match="severity must be 1 to 5, got 6"):
        corrupt(pixels, "jpeg", 6)


def test_attacks_raise_the_loss_inside_the_eps_ball(run, mnist):
    model, meta = load_model(run)
    pre = preprocess_of(meta)
    x, y = mnist.splits["test"].images[:200].float() / 255, mnist.splits["test"].labels[:200]

    def forward(p):
        return model(pre.normalize(p))

    def loss(p):
        with torch.no_grad():
            return float(F.cross_entropy(forward(p), y))

    def accuracy(p):
        with torch.no_grad():
            return float((forward(p).argmax(1) == y).float().mean())

    eps = 0.15
    one = fgsm(forward, x, y, eps)
    many = pgd(forward, x, y, eps, steps=10, generator=torch.Generator().manual_seed(0))
    for adv in (one, many):
        assert float((adv - x).abs().max()) <= eps + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1
        assert loss(adv) > loss(x) and accuracy(adv) <= accuracy(x)
    assert loss(many) > loss(one)  # ten projected steps find more than one
    assert all(p.grad is None for p in model.parameters())  # attacks leave the model's gradients alone
    # one PGD step of size eps from the image itself is FGSM
    assert torch.equal(pgd(forward, x, y, eps, steps=1, step_size=eps, random_start=False), one)
    assert torch.equal(many, pgd(forward, x, y, eps, steps=10, generator=torch.Generator().manual_seed(0)))


def test_robustness_report_evaluate_and_compare_include_it(run, tmp_path):
    report, html = robustness(run, corruptions=["gaussian_noise", "rotation"], eps=(0.1, 0.3), steps=5, limit=200)
    saved = json.loads((run / "robustness.json").read_text())
    assert saved["images"] == 200 and saved["clean_accuracy"] > 0.9 and saved == report.to_json()
    assert RobustnessReport.from_json(saved) == report
    noise = saved["corruptions"]["gaussian_noise"]
    assert len(noise["accuracy"]) == 5 and noise["accuracy"][4] < saved["clean_accuracy"]
    assert saved["mean_corruption_accuracy"] == pytest.approx(
        sum(noise["accuracy"] + saved["corruptions"]["rotation"]["accuracy"]) / 10)
    pgd_acc = saved["attacks"]["pgd"]["accuracy_by_eps"]
    fgsm_acc = saved["attacks"]["fgsm"]["accuracy_by_eps"]
    # a standard CNN collapses under PGD at eps 0.3 (Madry et al. 2018), and PGD is at least as strong as FGSM
    assert pgd_acc["0.3"] < 0.05 and pgd_acc["0.3"] <= pgd_acc["0.1"] <= saved["clean_accuracy"]
    assert pgd_acc["0.1"] <= fgsm_acc["0.1"]
    page = html.read_text()
    assert "rotation" in page and "pgd" in page and "data:image/png;base64" in page
    again = measure_robustness(run, corruptions=["gaussian_noise"], attack_names=(), limit=200)
    assert again.to_json()["corruptions"]["gaussian_noise"] == noise  # seeded: the same sample and the same noise
    assert json.loads((run / "robustness.json").read_text()) == saved  # measuring writes nothing

    evaluated, report_html = evaluate_run(run, resamples=20, latency_runs=2, out=tmp_path / "eval")
    assert evaluated.robustness["headline"] == {"mean_corruption_accuracy": saved["mean_corruption_accuracy"],
                                                   "pgd_eps": 0.3, "pgd_accuracy": pgd_acc["0.3"]}
    assert 'id="robustness"' in report_html.read_text()
    compared, compare_html = compare_runs([run, run], resamples=20, latency_runs=2, out=tmp_path / "cmp")
    assert compared.leaderboard[0].robustness["pgd_accuracy"] == pgd_acc["0.3"]
    assert "mean corruption accuracy" in compare_html.read_text()


def test_robustness_errors_and_exported_models(run, tmp_path):
    with pytest.raises(ImgclfError, match="unknown corruption 'fog'"):
        robustness(run, corruptions=["fog"])
    with pytest.raises(ImgclfError, match="unknown attack cw; choose from fgsm, pgd"):
        robustness(run, attack_names=("cw",))
    with pytest.raises(ImgclfError, match=r"so it must be in \[0, 1\]; got \[8.0\]"):
        robustness(run, eps=(8.0,))
    with pytest.raises(ImgclfError, match="--limit must be at least 1 image"):
        robustness(run, limit=0)
    with pytest.raises(ImgclfError, match="no eps given for the attacks"):
        robustness(run, eps=())
    for size in (0.0, -0.01, float("nan")):
        with pytest.raises(ImgclfError, match=r"the PGD step size must be in \(0, 1\]"):
            robustness(run, step_size=size)
    with pytest.raises(ImgclfError, match="the seed must be 0 or more"):
        robustness(run, seed=-1)
    _, onnx = export_run(run, "onnx", out=tmp_path)
    with pytest.raises(ImgclfError, match="attacks need the model's gradients"):
        robustness(onnx, limit=50)
    torch_report, _ = robustness(run, corruptions=["jpeg"], attack_names=(), limit=100, out=tmp_path / "torch")
    report, html = robustness(onnx, corruptions=["jpeg"], attack_names=(), limit=100)
    assert html == tmp_path / "robustness-model.onnx" / "robustness.html"  # beside the export, not the run's own
    assert report.corruptions["jpeg"].accuracy == torch_report.corruptions["jpeg"].accuracy
    # a stale (other weights) or damaged robustness.json is left out of reports, not shown as this model's
    meta = load_model(run)[1]
    folder = tmp_path / "torch"
    assert robustness_record(folder, meta).headline.mean_corruption_accuracy is not None
    saved = json.loads((folder / "robustness.json").read_text())
    for damaged in ({**saved, "sha256": "0" * 64}, {**saved, "attacks": []}, ["not", "a", "report"]):
        (folder / "robustness.json").write_text(json.dumps(damaged))
        assert robustness_record(folder, meta) is None


def test_cli_robustness(run, tmp_path, capsys):
    assert main(["robustness", str(run), "--corruptions", "contrast,occlusion", "--attacks", "pgd", "--eps",
                 "0.2", "--steps", "3", "--limit", "100", "--out", str(tmp_path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "clean accuracy" in out and "occlusion" in out and "pgd accuracy: eps 0.2:" in out
    assert (tmp_path / "robustness.html").is_file()
    assert main(["robustness", str(run), "--corruptions", "none", "--attacks", "all", "--eps", "0.1", "--steps",
                 "2", "--limit", "50", "--batch-size", "16", "--split", "test", "--out", str(tmp_path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "fgsm accuracy: eps 0.1:" in out and "pgd accuracy: eps 0.1:" in out
    assert json.loads((tmp_path / "robustness.json").read_text())["attacks"]["settings"]["batch_size"] == 16
    assert main(["robustness", str(run), "--attacks", "deepfool", "--corruptions", "none"]) == 1
    assert "unknown attack deepfool" in capsys.readouterr().err
