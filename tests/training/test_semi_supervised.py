"""Semi-supervised training (FixMatch-style): unlabelled images, pseudo-labels, their loss, exact resume."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from imgclf.config import load_config
from imgclf.data import images_at, load_unlabelled
from imgclf.errors import DataError, ImgclfError
from imgclf.training import train
from imgclf.training.parts import build_parts


def _config(tmp_path, mnist_dir, **overrides):
    """150 real MNIST training images, mnist-fast, 6 steps an epoch, each with 50 unlabelled images."""
    base = {"out": str(tmp_path / "runs"), "data.dataset": "mnist", "data.data_dir": str(mnist_dir),
            "data.subset": 150, "data.val_fraction": 0, "data.augment": "digits", "data.num_workers": 0,
            "model.name": "mnist-fast", "train.epochs": 1, "train.batch_size": 25, "train.lr": 0.003,
            "train.unlabelled_ratio": 2, "train.pseudo_threshold": 0.9}
    return load_config(None, {**base, **overrides})


def test_unlabelled_folders_are_read_at_any_depth_and_bad_ones_refused(tmp_path, mnist_dir, mnist_unlabelled,
                                                                        caplog):
    split = load_unlabelled(mnist_unlabelled)
    assert len(split) == 300 and not split.labels.any()  # folder names are no labels
    assert "README.txt (not an image file)" in caplog.text and "cut.png (unreadable" in caplog.text
    with pytest.raises(DataError, match="fails --strict: 2 file"):
        load_unlabelled(mnist_unlabelled, strict=True)
    missing = _config(tmp_path, mnist_dir, **{"data.unlabelled": f"folder:{tmp_path / 'nowhere'}"})
    with pytest.raises(ImgclfError, match=r"unlabelled image folder .*nowhere does not exist .* set data.unlabelled"):
        train(missing, progress=False)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("no images here")
    with pytest.raises(ImgclfError, match=r"unlabelled image folder .*empty has no readable images"):
        train(_config(tmp_path, mnist_dir, **{"data.unlabelled": str(tmp_path / "empty")}), progress=False)
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    with pytest.raises(ImgclfError, match=r"train.pseudo_threshold must be .*between 0 and 1"):
        _config(tmp_path, mnist_dir, **{"train.pseudo_threshold": 1.0})


def test_pseudo_labels_come_from_the_weak_view_and_train_the_strong_one(tmp_path, mnist_dir, mnist_unlabelled,
                                                                          mnist_run, mnist):
    """Pseudo-labels are the top class of the weakly augmented image, kept above the threshold (and then mostly
    right); the loss adds lambda_u x the masked cross-entropy of the strong view, averaged over all of them."""
    parts = build_parts(_config(tmp_path, mnist_dir, **{"data.unlabelled": str(mnist_unlabelled),
                                                        "model.init": str(mnist_run),
                                                        "train.unlabelled_weight": 0.5}))
    model, pre, generator = parts.model.eval(), parts.preprocess, torch.Generator().manual_seed(0)
    files = load_unlabelled(mnist_unlabelled)  # as files: their names say which MNIST digits they are
    truth = mnist.splits["train"].labels[[int(path.stem) for path in files.paths]]
    images = images_at(files, pre, torch.arange(len(files)))
    weak, strong = (pre.normalize(augment(images, generator)) for augment in (parts.augment, parts.strong))
    labels, mask = parts.pseudo_labels(weak)
    with torch.no_grad():
        probabilities = model(weak).softmax(1)
        assert torch.equal(labels, probabilities.argmax(1))
        assert torch.equal(mask, (probabilities.max(1).values >= 0.9).float())
        assert 0.5 < mask.mean() < 1 and (labels == truth)[mask.bool()].float().mean() > 0.95
        x, y = pre.normalize(images[:50]), truth[:50]
        _, loss = parts.batch_loss(model, x, y, (strong, labels, mask))
        by_hand = F.cross_entropy(model(x), y) + 0.5 * (F.cross_entropy(model(strong), labels, reduction="none")
                                                         * mask).sum() / len(strong)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert (strong - weak).abs().mean() > 0.1  # the strong view is not the weak one


def test_semi_supervised_run_logs_pseudo_rate_learns_from_it_and_resumes_exactly(tmp_path, mnist_dir,
                                                                                  mnist_unlabelled, mnist_run):
    """Which unlabelled images a step draws and how they are augmented survive a stop: the resumed run ends with
    the uninterrupted one's weights. The same steps with unlabelled_weight 0 (same draws, same batch norm
    batches) end elsewhere: the unlabelled loss moved the weights."""
    semi = {"data.unlabelled": str(mnist_unlabelled), "model.init": str(mnist_run)}
    whole = train(_config(tmp_path, mnist_dir, name="whole", **semi), progress=False, test=False)
    cut = train(_config(tmp_path, mnist_dir, name="cut", **semi), progress=False, test=False, max_steps=3)
    resumed = train(resume=cut.path, progress=False, test=False)
    a, b = load_file(whole.path / "model.safetensors"), load_file(resumed.path / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in resumed.history] == [
        {k: v for k, v in row.items() if k != "seconds"} for row in whole.history]
    rate = whole.history[-1]["pseudo_rate"]
    assert 0.5 < rate < 1  # measured 0.72: the started model is sure of most digits, not of all
    assert float(next(csv.DictReader((whole.path / "metrics.csv").open()))["pseudo_rate"]) == pytest.approx(rate)
    unweighted = train(_config(tmp_path, mnist_dir, name="unweighted", **semi, **{"train.unlabelled_weight": 0}),
                       progress=False, test=False, max_steps=3)
    c, d = (torch.load(run.path / "state.pt", weights_only=True)["model"] for run in (cut, unweighted))
    assert any(not torch.equal(c[k], d[k]) for k in c if k.endswith("weight"))
