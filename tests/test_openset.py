"""Unknown-input rejection on a real MNIST run: the fit made at training, its scores against real photos and
noise, and `unknown` answers from predict, evaluate and serve."""

import json
import shutil

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from imgclf import openset
from imgclf.cli import main
from imgclf.errors import ImgclfError
from imgclf.evaluate.evaluation import Predictions, fit_unknown, ood_images, open_run, unknown_section
from imgclf.predict import predict_files
from imgclf.rundir import load_model, preprocess_of
from serve.serving_helpers import encode, serving

CPU = torch.device("cpu")


def test_training_fits_a_detector_that_tells_digits_from_photos_and_noise(mnist_run, mnist, strangers):
    model, meta = load_model(mnist_run)
    fitted = openset.load(mnist_run, meta)
    # the run has no validation split: a fifth of its 6,000 training images set the threshold
    assert fitted.method == "energy" and len(fitted.val_scores["energy"]) == 1200
    assert set(fitted.val_scores) == set(openset.METHODS) and fitted.temperature > 0
    pre = preprocess_of(meta)
    digits = mnist.splits["test"].take(np.arange(1000))
    known = openset.score_split(model, digits, pre, CPU, fitted)
    rejected = float((known["energy"] > fitted.threshold()).mean())
    assert 0.01 < rejected < 0.15  # about the fitted 5% on new digits
    assert (known["energy"] > fitted.threshold(0.2)).mean() > rejected  # a higher rate rejects more
    # this small model (1 epoch on 6,000 images) separates less well than a full one (see BENCHMARKS.md)
    for part, (energy, mahalanobis) in {"photos": (0.95, 0.95), "noise": (0.95, 0.8)}.items():
        images = ood_images(f"folder:{strangers / part}", pre)
        assert len(images) == 40  # the broken file is left out
        scores = openset.score_split(model, images, pre, CPU, fitted)
        assert openset.separation(known["energy"], scores["energy"])["auroc"] > energy, part
        assert openset.separation(known["mahalanobis"], scores["mahalanobis"])["auroc"] > mahalanobis, part


def test_predict_and_evaluate_answer_unknown(mnist_run, mnist, strangers, tmp_path, capsys):
    digits = []
    for i in range(5):
        digits.append(tmp_path / f"digit{i}.png")
        Image.fromarray(mnist.splits["test"].images[i, 0].numpy()).save(digits[-1])
    photos = sorted((strangers / "photos" / "truck").iterdir())[:3]
    found = predict_files(mnist_run, digits + photos, unknown=True)
    assert [p.unknown for p in found[5:]] == [True] * 3 and sum(p.unknown for p in found[:5]) <= 1
    assert all(p.top and p.unknown_score is not None for p in found)
    assert all(p.unknown_score is None for p in predict_files(mnist_run, digits[:1]))  # only when asked

    assert main(["predict", str(mnist_run), str(photos[0]), "--unknown", "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["unknown"] is True and row["unknown_score"] == pytest.approx(found[5].unknown_score)
    assert len(row["top"]) == 3



def test_serve_answers_unknown_with_its_score(mnist_run, mnist, strangers):
    digit = encode(mnist.splits["test"].images[0, 0].numpy())
    photo = next((strangers / "photos" / "cat").iterdir()).read_bytes()
    with serving(mnist_run, unknown=True) as url:
        model = httpx.get(f"{url}/v1/model").json()
        assert model["unknown"]["method"] == "energy" and model["unknown"]["rate"] == 0.05
        answers = [httpx.post(f"{url}/v1/predict", files={"file": ("x.png", data)}).json()
                   for data in (digit, photo)]
    assert answers[0]["unknown"] is False and answers[0]["label"] == answers[0]["top"][0]["label"]
    assert answers[1]["unknown"] is True and answers[1]["label"] == "unknown"
    assert answers[1]["unknown_score"] > answers[1]["unknown_threshold"] == model["unknown"]["threshold"]
    assert answers[1]["top"][0]["label"] in model["classes"]  # the model's guesses stay in the answer


def test_unknown_errors_are_clear(mnist_run, tmp_path, strangers, caplog):
    run = tmp_path / "run"
    shutil.copytree(mnist_run, run)
    (run / openset.FILE).unlink()
    with pytest.raises(ImgclfError, match=r"no unknown-input detection .* imgclf evaluate .* --fit-unknown"):
        predict_files(run, [], unknown=True)
    opened = open_run(run)
    with pytest.raises(ImgclfError, match="--fit-unknown"):
        unknown_section(Predictions(opened, np.zeros((0, 10)), {}, False), ood=("folder:x",))
    fitted = fit_unknown(opened)  # a run trained before the detector existed gets one
    assert openset.load(run, opened.meta).threshold() == pytest.approx(fitted.threshold(), rel=1e-5)
    with pytest.raises(ImgclfError, match=r"must be in \(0, 1\)"):
        predict_files(run, [], unknown=True, unknown_rate=1.5)
    with pytest.raises(ImgclfError, match="no readable images"):
        ood_images(f"folder:{tmp_path / 'run'}", preprocess_of(opened.meta))
    with pytest.raises(ImgclfError, match="is not a folder"):
        ood_images(f"folder:{tmp_path / 'nowhere'}", preprocess_of(opened.meta))
    (run / openset.FILE).write_bytes(b"damaged")
    with pytest.raises(ImgclfError, match="is damaged"):
        predict_files(run, [], unknown=True)
    # a detector fitted on other weights is not used
    meta = json.loads((mnist_run / "model.json").read_text())
    assert openset.load(mnist_run, {**meta, "sha256": "0" * 64}) is None
    assert "fitted on other weights" in caplog.text
