"""Unknown-input rejection and calibration on real runs: an MNIST run and a run of the photo recipe on a
CIFAR-10 slice; the fit made at training, its scores against real photos, noise and flat images, the self-check
and its warning, calibrated probabilities, and `unknown` answers from predict, evaluate and serve."""

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED
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
    assert fitted.method == "combined" and len(fitted.val_scores["combined"]) == 1200
    assert set(openset.METHODS) <= set(fitted.val_scores) and fitted.temperature > 0
    assert fitted.bank.shape == (4800, model.num_features)
    pre = preprocess_of(meta)
    digits = mnist.splits["test"].take(np.arange(1000))
    known = openset.score_split(model, digits, pre, CPU, fitted)
    rejected = float((known["combined"] > fitted.threshold()).mean())
    assert 0.01 < rejected < 0.15  # about the fitted 5% on new digits
    assert (known["combined"] > fitted.threshold(0.2)).mean() > rejected  # a higher rate rejects more
    for part in ("photos", "noise"):
        images = ood_images(f"folder:{strangers / part}", pre)
        assert len(images) == 40  # the broken file is left out
        scores = openset.score_split(model, images, pre, CPU, fitted)
        for method in ("combined", "knn", "energy"):
            assert openset.separation(known[method], scores[method])["auroc"] > 0.95, (part, method)
    # the self-check at training found generated noise and flat images strange; no validation split: uncalibrated
    summary = json.loads((mnist_run / "summary.json").read_text())
    assert summary["unknown"]["check"] == fitted.check and min(fitted.check.values()) > 0.95
    assert summary["unknown"]["warning"] is None and fitted.warning is None
    assert "calibration" not in summary and "temperature" not in meta


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory) -> Path:
    """The automatic photo recipe (photo-fast at 32x32) for 6 epochs on 600 real CIFAR-10 photos of 3 classes
    (a 480/60/60 split)."""
    root = tmp_path_factory.mktemp("cifar3")
    for cls in ("automobile", "frog", "horse"):
        (root / cls).mkdir()
        for path in sorted((SHARED / "cifar10-train-25k" / cls).iterdir())[:200]:
            shutil.copy(path, root / cls / path.name)
    runs = tmp_path_factory.mktemp("runs")
    assert main(["train", "--dataset", f"folder:{root}", "--epochs", "6", "--train.seed", "1", "--out", str(runs),
                 "--name", "photos", "--data.num_workers", "0", "-q"]) == 0
    return runs / "photos"


def test_photo_run_is_calibrated_and_rejects_generated_noise_and_flat_images(photo_run, tmp_path, capsys):
    model, meta = load_model(photo_run)
    fitted = openset.load(photo_run, meta)
    summary = json.loads((photo_run / "summary.json").read_text())
    # calibrated at training on the 60 validation images; predict and serve answer with that temperature
    assert meta["temperature"] == pytest.approx(summary["calibration"]["temperature"]) != 1.0
    assert meta["calibration"]["samples"] == 60 and fitted.temperature == pytest.approx(meta["temperature"])
    assert summary["unknown"]["check"] == fitted.check and fitted.method == "combined"
    paths = {}
    for kind, images in openset.generated(3, (32, 32), 20, seed=7).items():
        for i, image in enumerate(images):
            paths.setdefault(kind, []).append(tmp_path / f"{kind} {i}.png")
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[kind][-1])
    for kind, files in paths.items():  # most of each kind, where 5% of the validation photos are
        rejected = [p.unknown for p in predict_files(photo_run, files, unknown=True)]
        assert sum(rejected) >= 10, kind
    found = predict_files(photo_run, paths["flat images"][:1])[0]
    with torch.no_grad():
        logits = model.eval()(preprocess_of(meta)(torch.from_numpy(np.array(Image.open(paths["flat images"][0])))
                                                  .permute(2, 0, 1).unsqueeze(0)))
    expected = torch.softmax(logits / meta["temperature"], 1).max().item()
    assert found.top[0][1] == pytest.approx(expected, rel=1e-4)  # the calibrated probability
    with serving(photo_run, unknown=True) as url:
        served = httpx.get(f"{url}/v1/model").json()
        answer = httpx.post(f"{url}/v1/predict", files={"file": ("x.png", paths["flat images"][0].read_bytes())})
    assert served["temperature"] == meta["temperature"] and served["unknown"]["check"] == fitted.check
    assert answer.json()["top"][0]["probability"] == pytest.approx(expected, rel=1e-4)


def test_a_detector_that_fails_its_self_check_says_so(photo_run, tmp_path, monkeypatch, capsys, caplog):
    # a bar no detector passes: training says so on screen and in summary.json
    monkeypatch.setattr(openset, "CHECK_AUROC", 1.01)
    runs = tmp_path / "runs"
    assert main(["train", "--dataset", "digits", "--epochs", "0.2", "--out", str(runs), "--name", "d", "-q"]) == 0
    assert "warning: unknown-input detection (combined) cannot tell generated" in capsys.readouterr().out
    assert "--unknown will accept such images" in json.loads((runs / "d" / "summary.json").read_text())["unknown"][
        "warning"]
    monkeypatch.undo()
    # a detector whose check failed (as recorded in its file): predict, serve and /v1/model repeat it
    run = tmp_path / "run"
    shutil.copytree(photo_run, run)
    fitted = openset.load(run, load_model(run)[1])
    fitted.check = {**fitted.check, "flat images": 0.61}
    fitted.save(run)
    image = next((SHARED / "cifar10-train-25k" / "frog").iterdir())
    assert main(["predict", str(run), str(image), "--unknown"]) == 0
    assert "cannot tell generated flat images from the validation images (AUROC flat images 0.61" in caplog.text
    with serving(run, unknown=True) as url:
        assert "flat images 0.61" in httpx.get(f"{url}/v1/model").json()["unknown"]["warning"]


def test_a_detector_fitted_by_an_earlier_version_still_works(mnist_run, mnist, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(mnist_run, run)
    model, meta = load_model(run)
    fitted = openset.load(run, meta)
    # as issue 21's version wrote it: energy, no knn bank, no self-check
    old = dataclasses.replace(fitted, method="energy", bank=None, check={},
                              val_scores={m: fitted.val_scores[m] for m in ("energy", "mahalanobis", "msp")})
    old.save(run)
    caplog.set_level(logging.INFO)
    loaded = openset.load(run, meta)
    assert loaded.methods == ("energy", "mahalanobis", "msp") and loaded.warning is None
    assert "fitted by an earlier imgclf" in caplog.text and "--fit-unknown" in caplog.text
    digit = tmp_path / "digit.png"
    Image.fromarray(mnist.splits["test"].images[0, 0].numpy()).save(digit)
    assert predict_files(run, [digit], unknown=True)[0].unknown_score is not None
    # a method this version does not know is one clear error naming the ones it does
    dataclasses.replace(fitted, method="vim").save(run)
    with pytest.raises(ImgclfError, match=r"method 'vim'.* knows combined, knn, energy, mahalanobis, msp"):
        openset.load(run, meta)
    with pytest.raises(ImgclfError, match="choose one of combined, knn"):
        openset.fit(model, mnist.splits["test"], None, preprocess_of(meta), CPU, model_sha256="x", method="vim")


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
        assert model["unknown"]["method"] == "combined" and model["unknown"]["rate"] == 0.05
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
