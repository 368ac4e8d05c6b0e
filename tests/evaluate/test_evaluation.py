"""evaluate, compare and cv on tiny real MNIST runs: reports, calibration, significance, folds, errors."""

import base64
import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from imgclf import openset
from imgclf.cli import main
from imgclf.config import load_config
from imgclf.cv import cross_validate
from imgclf.data import load_dataset, train_val
from imgclf.errors import ImgclfError
from imgclf.evaluate.compare import compare_runs
from imgclf.evaluate.evaluation import EvalReport, ScoreOn, eval_data, evaluate_run
from imgclf.evaluate.metrics import log_loss, softmax
from imgclf.predict import predict_files, predict_logits
from imgclf.rundir import load_model, preprocess_of
from imgclf.training import train

SECTIONS = ("summary", "training-curves", "classification-report", "confusion-matrix", "roc-and-precision-recall",
            "calibration", "most-confused-pairs", "misclassified-images", "efficiency", "fairness")


def _config(out, mnist_dir, **overrides):
    base = {"out": str(out), "data.dataset": "mnist", "data.data_dir": str(mnist_dir), "data.subset": 2000,
            "data.augment": "none", "data.num_workers": 0, "train.epochs": 1, "train.batch_size": 64,
            "train.lr": 0.01}
    return load_config(None, {**base, **overrides})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_dir):
    """Two small real MNIST runs that differ in model and seed."""
    out = tmp_path_factory.mktemp("runs")
    first = train(_config(out, mnist_dir, name="fast"), progress=False)
    second = train(_config(out, mnist_dir, name="cnn", **{"model.name": "cnn", "train.seed": 1, "train.open_set": "off",
                                                         "model.options": {"layers": 2, "width": 8}}), progress=False)
    assert (first.path / "open_set.safetensors").is_file() and not (second.path / "open_set.safetensors").exists()
    return first, second


def _pngs(html: str) -> dict[str, Image.Image]:
    return {alt: Image.open(io.BytesIO(base64.b64decode(data)))
            for alt, data in re.findall(r'alt="([^"]+)" src="data:image/png;base64,([^"]+)"', html)}


def test_report_on_a_real_run_has_every_number_and_section(runs, tmp_path):
    run = runs[0]
    report, html_path = evaluate_run(run.path / "model.json", resamples=200, latency_runs=5, out=tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == json.loads(json.dumps(report.to_json()))  # every number of the report is in report.json
    assert EvalReport.from_json(saved).to_json() == saved  # and read back as it was
    assert report.samples == 10_000 and report.accuracy == pytest.approx(run.summary.test_acc)
    low, high = report.confidence_intervals["accuracy"]
    assert low < report.accuracy < high and high - low < 0.03
    assert 0 < report.calibration["ece"] < 0.2 and len(report.calibration["bins"]["count"]) == 15
    assert report.top_k["k"] == 5 and report.accuracy < report.top_k["accuracy"] <= 1
    # calibrated at the end of training on the run's validation images
    assert report.temperature["value"] != 1.0 and report.temperature["fitted"]["samples"] == run.summary.val_images
    assert report.temperature["fitted"]["fitted_on"] == "validation split, at the end of training"
    assert report.efficiency["params"] == sum(p.numel() for p in load_model(run.path)[0].parameters())
    assert report.efficiency["latency_ms"]["p50"] <= report.efficiency["latency_ms"]["p99"]
    assert report.training["summary"]["train_seconds"] > 0 and len(report.training["history"]) == 1
    wrong = report.misclassified
    assert wrong and all(m["true"] != m["predicted"] for m in wrong)
    assert [m["loss"] for m in wrong] == sorted((m["loss"] for m in wrong), reverse=True)
    html = html_path.read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in html
    images = _pngs(html)
    assert len(images) == 7
    for alt, image in images.items():
        assert image.format == "PNG" and image.width > 200, alt
        low, high = image.convert("L").getextrema()
        assert low < high, f"{alt} is blank"


def test_calibrate_fits_on_validation_saves_temperature_and_predict_uses_it(runs, tmp_path, mnist_dir):
    folder = tmp_path / "run"
    shutil.copytree(runs[0].path, folder)
    report, _ = evaluate_run(folder, calibrate=True, resamples=50, latency_runs=3)
    model, meta = load_model(folder)  # the weights checksum still holds
    temperature = meta["temperature"]
    # the fitted temperature minimizes the log loss on the run's validation split
    dataset = load_dataset("mnist", mnist_dir)
    _, val = train_val(dataset, 2000, 0.1, 0)
    assert report.temperature["value"] == temperature and meta["calibration"]["samples"] == len(val)
    logits = predict_logits(model, val, preprocess_of(meta), torch.device("cpu"))
    targets = val.labels.numpy()
    best = log_loss(softmax(logits, temperature), targets)
    assert best <= log_loss(softmax(logits, temperature * 1.2), targets)
    assert best <= log_loss(softmax(logits, temperature / 1.2), targets)
    assert best <= log_loss(softmax(logits, 1.0), targets)
    # predict returns the calibrated probabilities
    image_path = tmp_path / "digit.png"
    image = dataset.split("test")[0][0]
    Image.fromarray(image[0].numpy()).save(image_path)
    top = predict_files(folder, [image_path], top=1)[0].top[0]
    x = preprocess_of(meta)(image.unsqueeze(0))
    with torch.no_grad():
        expected = torch.softmax(model(x) / temperature, dim=1).max().item()
    assert top[1] == pytest.approx(expected, rel=1e-5)


def test_evaluate_on_a_folder_with_some_of_the_models_classes(runs, tmp_path, mnist):
    """A plain folder of 3/ and 7/ PNGs (RGB, unlike MNIST) is evaluated whole, labels mapped to the model's."""
    test = mnist.split("test")
    for digit in (3, 7):
        folder = tmp_path / "digits" / str(digit)
        folder.mkdir(parents=True)
        for i in np.flatnonzero(test.labels.numpy() == digit)[:15]:
            Image.fromarray(test.images[i, 0].numpy()).convert("RGB").save(folder / f"{i}.png")
    digits = ScoreOn(source=f"folder:{tmp_path / 'digits'}")
    report, _ = evaluate_run(runs[0].path, digits, out=tmp_path / "report", resamples=50, latency_runs=3)
    assert report.samples == 30 and report.dataset == f"folder:{tmp_path / 'digits'}"
    support = {row["class"]: row["support"] for row in report.per_class}
    assert support["3"] == 15 and support["7"] == 15 and support["0"] == 0
    assert report.auc[0] is None and report.auc[3] is not None  # no class-0 sample: its AUC is undefined
    files = sorted((tmp_path / "digits").glob("*/*.png"))
    predicted = [p.top[0][0] for p in predict_files(runs[0].path, files, top=1)]
    truth = [f.parent.name for f in files]
    assert report.accuracy == pytest.approx(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))

    (tmp_path / "digits" / "cat").mkdir()
    shutil.copy(files[0], tmp_path / "digits" / "cat" / "x.png")
    with pytest.raises(ImgclfError, match="classes the model was not trained on \\(cat\\)"):
        evaluate_run(runs[0].path, digits, out=tmp_path / "report")


def test_evaluate_errors_are_clear(runs, tmp_path, mnist_dir):
    with pytest.raises(ImgclfError, match="not a run directory"):
        evaluate_run(tmp_path)
    with pytest.raises(ImgclfError, match="has no 'holdout' split; it has train, test"):
        evaluate_run(runs[0].path, ScoreOn(split="holdout"))
    no_val = train(_config(tmp_path, mnist_dir, name="noval", **{"data.subset": 256, "data.val_fraction": 0.0}),
                   progress=False)
    before = (no_val.path / "model.json").read_text()
    with pytest.raises(ImgclfError, match="without a validation split"):
        evaluate_run(no_val.path, calibrate=True)
    assert (no_val.path / "model.json").read_text() == before  # nothing saved is touched


def test_compare_ranks_runs_with_paired_tests(runs, tmp_path, capsys):
    assert main(["compare", *(str(r.path) for r in runs), "--resamples", "100", "--latency-runs", "3", "--out",
                 str(tmp_path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "McNemar p vs best" in out and "published: LeNet-5" in out
    result, html_path = json.loads((tmp_path / "compare.json").read_text()), tmp_path / "compare.html"
    board = result["leaderboard"]
    assert [e["accuracy"] for e in board] == sorted((e["accuracy"] for e in board), reverse=True)
    best, other = board
    assert best["vs_best"] is None and 0 <= other["vs_best"]["p_value"] <= 1
    # discordant pairs account exactly for the accuracy difference on the same images
    diff = (other["vs_best"]["a_only"] - other["vs_best"]["b_only"]) / result["samples"]
    assert diff == pytest.approx(best["accuracy"] - other["accuracy"])
    assert {p["model"] for p in result["published"]} >= {"LeNet-5"}
    assert json.loads((tmp_path / "compare.json").read_text())["best"] == best["name"]
    html = html_path.read_text()
    assert 'id="leaderboard"' in html and 'id="published-figures"' in html and len(_pngs(html)) == 1


def test_compare_refuses_runs_on_different_classes_or_images(runs, tmp_path, image_folder):
    def pets(seed: int):
        return train(load_config(None, {"out": str(tmp_path / "runs"), "name": f"pets{seed}",
                                        "data.dataset": f"folder:{image_folder}", "data.num_workers": 0,
                                        "data.split_seed": seed, "train.batch_size": 4, "train.epochs": 1,
                                        "data.augment": "none"}), progress=False).path

    first, second = pets(0), pets(1)
    with pytest.raises(ImgclfError, match="does not share the classes"):
        compare_runs([runs[0].path, first], out=tmp_path / "cmp")
    # same classes and labels, but the split seed put other images into the test split: not a paired test
    with pytest.raises(ImgclfError, match="split seed"):
        compare_runs([first, second], out=tmp_path / "cmp")
    with pytest.raises(ImgclfError, match="at least two"):
        compare_runs([runs[0].path])


def test_report_without_summary_and_with_gaps_in_metrics_csv(runs, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(runs[0].path, folder)
    (folder / "summary.json").unlink()
    (folder / "metrics.csv").write_text("epoch,train_loss,val_loss,val_acc\n1,0.5,nan,\n2,0.4,0.3,0.9\n")
    _, html = evaluate_run(folder, resamples=20, latency_runs=3)
    strict = json.loads((folder / "report.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert strict["training"]["history"][0]["val_loss"] is None and strict["training"]["summary"] == {}
    assert "loss and accuracy per epoch" in _pngs(html.read_text())


def test_cross_validation_folds_partition_the_training_data(tmp_path, mnist_dir):
    config = _config(tmp_path, mnist_dir, name="cv", **{"data.subset": 300, "train.batch_size": 50})
    result, path = cross_validate(config, folds=3, seeds=1, progress=False)
    assert [(r["fold"], r["seed"]) for r in result["runs"]] == [(0, 0), (1, 0), (2, 0)]
    accs = [r["val_acc"] for r in result["runs"]]
    assert result["summary"]["val_acc"]["mean"] == pytest.approx(np.mean(accs))
    assert result["summary"]["val_acc"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    fold_config = load_config(tmp_path / "cv" / "fold1-seed0" / "config.yaml")
    assert (fold_config.data.folds, fold_config.data.fold) == (3, 1)  # each fold re-runnable as-is
    sizes = [json.loads((tmp_path / "cv" / f"fold{k}-seed0" / "summary.json").read_text()) for k in range(3)]
    assert [s["val_images"] for s in sizes] == [100, 100, 100]  # the folds' validation parts cover the 300
    assert all(s["train_images"] == 200 for s in sizes)
    # and they are disjoint: the validation split each fold run used, read back through evaluate's val split
    dataset = load_dataset("mnist", mnist_dir)
    vals = [eval_data(tmp_path / "cv" / f"fold{k}-seed0", {"classes": dataset.classes, "dataset": "mnist"},
                      split="val").split for k in range(3)]
    seen = {bytes(img.numpy()) for v in vals for img in v.images}
    assert len(seen) == len({bytes(img.numpy()) for img in dataset.split("train").images[:300]})


def test_cli_evaluate_and_cv(runs, tmp_path, mnist_dir, strangers, capsys):
    assert main(["evaluate", str(runs[0].path), "--resamples", "50", "--latency-runs", "3", "--out",
                 str(tmp_path / "e"), "--ood", f"folder:{strangers}", "--unknown-rate", "0.1", "-q"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"accuracy\s+0\.\d{4}\s+\[0\.\d{4}, 0\.\d{4}\]", out) and "report: " in out
    # unknown inputs: rejections on the test digits, and how well each score tells real photos and noise apart
    assert "unknown    " in out and f"vs folder:{strangers} (80 images)" in out
    unknown = json.loads((tmp_path / "e" / "report.json").read_text())["unknown"]
    assert unknown["method"] == "combined" and unknown["rate"] == 0.1 and unknown["warning"] is None
    assert unknown["validation_images"] == runs[0].summary.val_images
    assert 0.03 < unknown["rejected"] < 0.25 and unknown["accepted_accuracy"] > unknown["rejected_accuracy"]
    (ood,) = unknown["ood"]
    assert ood["images"] == 80 and ood["rejected"] > 0.5 and ood["combined"]["auroc"] > 0.9
    assert all(0 <= ood[m]["fpr95"] <= 1 and 0.5 < ood[m]["auroc"] <= 1 for m in openset.METHODS)
    assert 'id="unknown-inputs"' in (tmp_path / "e" / "report.html").read_text()
    assert main(["cv", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--out", str(tmp_path), "--name", "s",
                 "--folds", "1", "--seeds", "2", "--data.subset", "200", "--train.batch_size", "50", "-q"]) == 0
    out = capsys.readouterr().out
    assert "mean +/- std" in out and (tmp_path / "s" / "fold0-seed1").is_dir()
    assert main(["cv", "--folds", "1", "--seeds", "1"]) == 1
    assert "single run" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: one or the other
        main(["evaluate", str(runs[0].path), "--dataset", "mnist", "--data", "folder:x"])
    assert "not allowed with argument" in capsys.readouterr().err
