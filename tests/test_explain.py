"""Explanations: sanity checks on a real MNIST model (Adebayo et al. 2018), overlays, errors and the CLI."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import spearmanr

from imgclf.cli import main
from imgclf.data import Preprocess
from imgclf.errors import ImgclfError
from imgclf.explain import attribute, default_layer, explain_files
from imgclf.export import export_run
from imgclf.models import create_model
from imgclf.models.summary import collapsed_note, map_sides
from imgclf.rundir import load_model, preprocess_of, save_model


@pytest.fixture(scope="module")
def digits(mnist_run, mnist):
    """64 real test digits: model inputs, stroke masks, and the classes the model predicts."""
    model, meta = load_model(mnist_run)
    pre = preprocess_of(meta)
    images = mnist.splits["test"].images[:64]
    x = pre(images)
    stroke = images[:, 0].float() / 255 > 0.2
    # the stroke and the pixel around it: gradients of a conv net spread to the edge of a stroke
    near = F.max_pool2d(stroke.float().unsqueeze(1), 3, stride=1, padding=1)[:, 0] > 0
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    return model, pre, x, stroke, near, predicted


def _mass(maps: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of the attribution that falls inside the mask."""
    return float((maps * mask).sum() / maps.sum())


@pytest.mark.parametrize("method", ["gradcam", "saliency"])
def test_attribution_lies_on_the_strokes_and_needs_the_trained_weights(method, digits):
    model, _, x, _, near, predicted = digits
    maps = attribute(model, x, predicted, method)
    assert maps.shape == (64, 28, 28) and float(maps.min()) >= 0 and float(maps.amax(dim=(1, 2)).min()) == 1
    # per pixel, the strokes (about 27% of the image) get over twice the attribution of the background
    area, mass = float(near.float().mean()), _mass(maps, near)
    assert (mass / area) / ((1 - mass) / (1 - area)) > 2, (mass, area)
    # model randomization test: the same architecture with random weights gives different maps
    torch.manual_seed(1)
    random = create_model("mnist-fast", 10, 1, 28).eval()
    shuffled = attribute(random, x, predicted, method)
    rho = np.mean([spearmanr(a.flatten(), b.flatten()).statistic for a, b in zip(maps, shuffled, strict=True)
                   if a.std() > 0 and b.std() > 0])  # a random net's Grad-CAM can be all zero after the ReLU
    assert rho < 0.6, rho


def test_integrated_gradients_start_from_a_black_image(digits):
    """With a black baseline, a pixel that is black in the image gets no attribution (completeness per pixel:
    IG is (x - baseline) times the averaged gradient), so the whole map lies on the digit."""
    model, pre, x, _, _, predicted = digits
    baseline = pre.normalize(torch.zeros_like(x))
    maps = attribute(model, x, predicted, "integrated-gradients", baseline=baseline, steps=16)
    black = pre.denormalize(x)[:, 0] == 0
    assert float(maps[black].abs().max()) == 0 and _mass(maps, ~black) == pytest.approx(1.0)
    gray = attribute(model, x, predicted, "integrated-gradients", steps=16)  # zeros in model units: mean gray
    assert float(gray[black].max()) > 0


def test_explain_files_writes_overlays_and_a_grid(mnist_run, mnist, tmp_path):
    paths = []
    for i in range(3):
        image, label = mnist.splits["test"][i]
        paths.append(tmp_path / f"digit{i}-{label}.png")
        Image.fromarray(image[0].numpy()).save(paths[-1])
    run = shutil.copytree(mnist_run, tmp_path / "run")
    records, grid = explain_files(run, paths, ("gradcam", "saliency", "integrated-gradients"))
    assert grid == run / "explanations" / "explanations.png"
    assert [r["predicted"] for r in records] == ["7", "2", "1"]  # the first three MNIST test digits
    for r in records:
        assert r["explained"] == r["predicted"] and 0 < r["probability"] <= 1
        for path in r["overlays"].values():
            with Image.open(path) as overlay:
                assert overlay.size[0] > 100 and np.asarray(overlay.convert("L")).std() > 10  # drawn, not blank
    with Image.open(grid) as picture:  # 3 rows of 4 panels, 2.2 x 2.3 inches each
        assert picture.size[0] / picture.size[1] == pytest.approx((4 * 2.2) / (3 * 2.3), rel=0.02)
    twin = tmp_path / "twin" / paths[0].name  # the same file name in another folder
    twin.parent.mkdir()
    shutil.copy(paths[1], twin)
    records, _ = explain_files(run, [paths[0], twin], ("saliency",), target="3", out=tmp_path / "other")
    assert [r["explained"] for r in records] == ["3", "3"] and records[0]["predicted"] == "7"
    assert sorted(p.name for p in (tmp_path / "other").glob("digit0*")) == ["digit0-7-2.saliency.png",
                                                                           "digit0-7.saliency.png"]


def test_explain_errors(mnist_run, tmp_path, write_image):
    image = write_image(tmp_path / "a.png")
    with pytest.raises(ImgclfError, match="unknown explanation method lime; choose from gradcam"):
        explain_files(mnist_run, [image], ("lime",), out=tmp_path)
    with pytest.raises(ImgclfError, match=r"--target 'cat' is not one of the model's classes \(0, 1"):
        explain_files(mnist_run, [image], target="cat", out=tmp_path)
    with pytest.raises(ImgclfError, match=r"unknown explanation method \(none given\)"):
        explain_files(mnist_run, [image], (), out=tmp_path)
    with pytest.raises(ImgclfError, match="--layer picks the Grad-CAM layer; add gradcam"):
        explain_files(mnist_run, [image], ("saliency",), layer="body.act1", out=tmp_path)
    with pytest.raises(ImgclfError, match=r"has no layer 'body.act'; did you mean body\.act"):
        explain_files(mnist_run, [image], layer="body.act", out=tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImgclfError, match=r"cannot read image .*broken\.png"):
        explain_files(mnist_run, [tmp_path / "broken.png"], out=tmp_path)
    _, onnx = export_run(mnist_run, "onnx", out=tmp_path)
    with pytest.raises(ImgclfError, match="pass the run directory, not an exported file"):
        explain_files(onnx, [image], out=tmp_path)


def test_cli_explain(mnist_run, tmp_path, write_image, capsys):
    image = write_image(tmp_path / "photo.jpg", size=(40, 30))  # any size and colour: preprocessed as in training
    assert main(["explain", str(mnist_run), str(image), "--method", "gradcam,saliency", "--layer", "body.act1",
                 "--out", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "photo.jpg:" in out and "photo.gradcam.png" in out and "explanations.png" in out
    assert main(["explain", str(mnist_run), str(tmp_path / "missing.png"), "--out", str(tmp_path)]) == 1
    assert "there is no image" in capsys.readouterr().err


def test_gradcam_defaults_to_the_last_layer_with_maps_of_at_least_4x4():
    """resnet18 at 32 px: layer4 sees 1x1 maps, where Grad-CAM is one flat value; the default moves earlier."""
    torch.manual_seed(0)
    model = create_model("resnet18", 3, 3, 32).eval()  # no weights: offline
    sides = {name: side for name, side, _ in map_sides(model)}
    layer = default_layer(model)
    assert sides[model.target_layer] == 1 and sides[layer] >= 4
    assert not any(side >= 4 for name, side in list(sides.items())[list(sides).index(layer) + 1:]
                   if name.startswith("body.layer"))  # the last such stage
    x, target = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    assert float(attribute(model, x, target, "gradcam", model.target_layer).std()) < 1e-6  # the flat map of before
    assert float(attribute(model, x, target, "gradcam").flatten(1).std(dim=1).min()) > 0.05
    assert default_layer(create_model("mnist-fast", 10, 1, 28)) == "body.act2"  # a small CNN keeps its own


def _saved(folder, name: str, size: int):
    folder.mkdir()
    model = create_model(name, 2, 3, size)
    save_model(folder, model, ["a", "b"], Preprocess((size, size), 3, (0.5,) * 3, (0.25,) * 3))
    return folder


@pytest.mark.parametrize(("name", "size", "warned"), [("resnet18", 32, True), ("photo-fast", 32, False)])
def test_explain_warns_when_the_last_stages_see_1x1_maps(tmp_path, write_image, caplog, name, size, warned):
    run = _saved(tmp_path / "run", name, size)
    explain_files(run, [write_image(tmp_path / "a.png")], out=tmp_path / "out")
    flat = [r.message for r in caplog.records if r.levelname == "WARNING" and "1x1 feature maps" in r.message]
    assert len(flat) == warned
    if warned:
        assert flat[0].startswith("resnet18 at 32x32 px") and "body.layer4.0.conv1" in flat[0]
        assert "image size of at least 128" in flat[0]
    assert collapsed_note(create_model("mnist-best", 10, 1, 28)) is None  # a small CNN's global pool is no stage
    assert collapsed_note(create_model("resnet18", 2, 3, 224)) is None  # layer4 sees 7x7 at its own size
