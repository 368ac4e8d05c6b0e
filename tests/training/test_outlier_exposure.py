"""Outlier exposure with generated images (train.outlier_exposure): the made-up images, their loss, exact resume."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from imgclf import openset
from imgclf.config import load_config
from imgclf.data import synthetic_outliers
from imgclf.rundir import load_model, preprocess_of
from imgclf.training import train


def test_synthetic_outliers_are_noise_flat_colours_and_shuffled_patches():
    x = torch.rand(6, 3, 32, 30)
    made = synthetic_outliers(x, 8, torch.Generator().manual_seed(0))
    assert made.shape == (8, 3, 32, 30) and made.min() >= 0 and made.max() <= 1
    flat = made[2::4]  # the kinds take turns: uniform, Gaussian, flat, shuffled patches
    assert torch.all(flat.amax((2, 3)) == flat.amin((2, 3)))
    assert all(made[i].std() > 0.2 for i in (0, 4)) and all(0.1 < made[i].std() < 0.3 for i in (1, 5))
    for shuffled in made[3::4]:  # the 32x28 crop of one batch image, its 16 patches in another order
        crop = shuffled[:, :, :28]
        source = [i for i in range(6) if torch.equal(x[i, :, :, :28].flatten().sort().values,
                                                     crop.flatten().sort().values)]
        assert len(source) == 1 and not torch.equal(crop, x[source[0], :, :, :28])
        assert torch.all(shuffled[:, :, 28:] == 0)  # what does not fill whole patches is left black
    again = synthetic_outliers(x, 8, torch.Generator().manual_seed(0))
    assert torch.equal(made, again)  # drawn from the generator: a resumed run draws the same


def _config(tmp_path, mnist_dir, **overrides):
    """150 real MNIST training images, mnist-fast, 6 steps of 25 (and 6 made-up images each)."""
    base = {"out": str(tmp_path / "runs"), "data.dataset": "mnist", "data.data_dir": str(mnist_dir),
            "data.subset": 150, "data.val_fraction": 0, "data.augment": "digits", "data.num_workers": 0,
            "model.name": "mnist-fast", "train.epochs": 1, "train.batch_size": 25, "train.lr": 0.003,
            "train.outlier_exposure": 0.5}
    return load_config(None, {**base, **overrides})


def test_outlier_exposure_flattens_the_answer_on_noise_and_resumes_exactly(tmp_path, mnist_dir, mnist_run):
    start = {"model.init": str(mnist_run)}
    whole = train(_config(tmp_path, mnist_dir, name="whole", **start), progress=False, test=False)
    cut = train(_config(tmp_path, mnist_dir, name="cut", **start), progress=False, test=False, max_steps=3)
    resumed = train(resume=cut.path, progress=False, test=False)
    a, b = load_file(whole.path / "model.safetensors"), load_file(resumed.path / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = train(_config(tmp_path, mnist_dir, name="plain", **start, **{"train.outlier_exposure": 0}),
                  progress=False, test=False)
    noise = openset.generated(1, (28, 28), 200, seed=3)["uniform noise"]

    def confidence(run) -> float:  # the mean top probability the run gives uniform noise
        model, meta = load_model(run.path)
        with torch.no_grad():
            return float(model.eval()(preprocess_of(meta)(noise)).softmax(1).amax(1).mean())

    assert confidence(whole) < confidence(plain) - 0.1
