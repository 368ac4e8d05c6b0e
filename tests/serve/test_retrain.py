"""imgclf retrain: fine-tune on the run's data plus feedback, compare, promote only if better."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
import yaml
from serving_helpers import encode

from imgclf.cli import main
from imgclf.errors import ImgclfError
from imgclf.retrain import _split_feedback, retrain
from imgclf.rundir import load_model, preprocess_of
from imgclf.serve.feedback import FeedbackStore


def _feedback(path, mnist, count: int, label_of=None) -> None:
    """`count` real MNIST training digits drawn dark on light (a photo of paper), with their true labels."""
    store = FeedbackStore(path)
    split = mnist.splits["train"]
    for i in range(count):
        image, label = split[50_000 + i]
        store.add(label_of(label) if label_of else str(label), encode(255 - image[0].numpy()), predicted="0")
    store.close()


def test_retrain_compares_on_test_and_held_out_feedback_and_promotes_by_the_rule(mnist_run, mnist, tmp_path,
                                                                                  capsys):
    run = shutil.copytree(mnist_run, tmp_path / "runs" / "fast")
    _feedback(tmp_path / "f.db", mnist, 150)
    assert main(["retrain", str(run), "--feedback", str(tmp_path / "f.db"), "--epochs", "1", "--lr-factor", "0.5",
                 "--name", "v2"]) == 0
    printed = capsys.readouterr().out
    new = tmp_path / "runs" / "v2"
    result = json.loads((new / "retrain.json").read_text())
    trained, held = result["feedback_train_images"], result["after"]["feedback"]["images"]
    assert trained + held == 150 and held >= 10  # about 30% held out, chosen by image hash
    summary = json.loads((new / "summary.json").read_text())
    assert summary["train_images"] == 6000 + trained  # the run's own data plus the corrections
    config = yaml.safe_load((new / "config.yaml").read_text())
    assert config["model"]["init"] == str(run.resolve()) and config["data"]["extra"].endswith("v2.feedback/train")
    # held-out images are chosen by their bytes: a second round holds out the same ones
    held_out = sorted(p.name for p in (tmp_path / "runs" / "v2.feedback" / "holdout").rglob("*.png"))
    with pytest.raises(ImgclfError, match="already exists; pass another --name"):
        retrain(run, tmp_path / "f.db", name="v2")
    _split_feedback(tmp_path / "f.db", tmp_path / "again", 0.3, 10)
    assert sorted(p.name for p in (tmp_path / "again" / "holdout").rglob("*.png")) == held_out
    # the table's numbers are the models' real accuracies on the original test split
    model, meta = load_model(run)
    x, y = preprocess_of(meta)(mnist.splits["test"].images), mnist.splits["test"].labels
    with torch.no_grad():
        assert result["before"]["test"]["accuracy"] == pytest.approx(float((model(x).argmax(1) == y).float().mean()))
    before, after = result["before"], result["after"]
    rule = (after["feedback"]["accuracy"] > before["feedback"]["accuracy"]
            and after["test"]["accuracy"] >= before["test"]["accuracy"])
    assert result["promoted"] == rule and (tmp_path / "runs" / "CURRENT").is_file() == rule
    # it learned the dark-on-light digits (measured: 0.20 -> 0.91 held out, test 0.9733 -> 0.9792: promoted)
    assert after["feedback"]["accuracy"] > before["feedback"]["accuracy"] + 0.3 and result["promoted"]
    assert "held-out feedback" in printed and ("promoted" in printed)


def test_retrain_learns_from_unlabelled_images_and_the_promotion_rule_still_decides(mnist_run, mnist, tmp_path,
                                                                                    mnist_unlabelled, capsys):
    run = shutil.copytree(mnist_run, tmp_path / "runs" / "fast")
    _feedback(tmp_path / "f.db", mnist, 30)
    assert main(["retrain", str(run), "--feedback", str(tmp_path / "f.db"), "--epochs", "0.02", "--holdout", "0.5",
                 "--min-holdout", "5", "--unlabelled", str(mnist_unlabelled), "--name", "semi"]) == 0
    new = tmp_path / "runs" / "semi"
    config = yaml.safe_load((new / "config.yaml").read_text())
    assert config["data"]["unlabelled"] == str(mnist_unlabelled.resolve())
    assert float(next(csv.DictReader((new / "metrics.csv").open()))["pseudo_rate"]) > 0.5  # pseudo-labels trained
    result = json.loads((new / "retrain.json").read_text())
    before, after = result["before"], result["after"]
    rule = (after["feedback"]["accuracy"] > before["feedback"]["accuracy"]
            and after["test"]["accuracy"] >= before["test"]["accuracy"])
    assert result["promoted"] == rule and (tmp_path / "runs" / "CURRENT").is_file() == rule
    assert result["settings"]["unlabelled"] == str(mnist_unlabelled.resolve())
    assert f"and the unlabelled images in {mnist_unlabelled.resolve()}" in capsys.readouterr().out


def test_retrain_errors(mnist_run, mnist, tmp_path):
    run = shutil.copytree(mnist_run, tmp_path / "runs" / "fast")
    _feedback(tmp_path / "few.db", mnist, 12)
    with pytest.raises(ImgclfError, match=r"has 12 feedback images, \d+ of them held out .* at least 10 held out"):
        retrain(run, tmp_path / "few.db")
    with pytest.raises(ImgclfError, match=r"--holdout is the share .* got 1.5"):
        retrain(run, tmp_path / "few.db", holdout=1.5)
    _feedback(tmp_path / "cats.db", mnist, 20, label_of=lambda label: "cat" if label % 2 else str(label))
    with pytest.raises(ImgclfError, match="images of cat, which are not classes of this dataset"):
        retrain(run, tmp_path / "cats.db", holdout=0.5, min_holdout=1)
    with pytest.raises(ImgclfError, match=r"has no config\.yaml to retrain from"):
        retrain(tmp_path, tmp_path / "one.db")
