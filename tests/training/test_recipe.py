"""The recipe chosen from the data (model auto): what it picks, that the user's settings win, that random
weights are never frozen or slowed, and that `imgclf train` prints its choice and saves it re-runnable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from imgclf.cli import main
from imgclf.config import load_config
from imgclf.data import Preprocess, TensorSplit
from imgclf.models import create_model
from imgclf.predict import predict_logits
from imgclf.training import recipe
from imgclf.training.recipe import choose, resolve

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _info(size, channels=3):
    return {"size": size, "channels": channels}


def test_small_photos_get_the_fast_photo_recipe():
    values, why = choose(_info((32, 32)), 20_000, "photos", "cpu", None)
    assert values["model.name"] == "photo-fast" and values["data.image_size"] == 32
    assert values["train.batch_size"] == 512 and values["train.epochs"] == 16 and values["train.optimizer"] == "sgd"
    assert values["train.label_smoothing"] == 0.2 and values["data.augment"] == "light" and "32" in why
    few, _ = choose(_info((56, 48)), 300, "photos", "cpu", None)  # few images: smaller batches, more epochs
    assert few["data.image_size"] == 64 and few["train.batch_size"] == 32 and few["train.epochs"] == 40
    assert few["train.lr"] == pytest.approx(0.4 * 32 / 512) and few["data.augment"] == "photos"


def test_digits_keep_the_mnist_recipe():
    assert choose(_info((28, 28), 1), 60_000, "digits", "cpu", None)[0] == {"model.name": "mnist-fast"}
    assert choose(_info((8, 8), 1), 1_400, "photos", "cpu", None)[0]["model.name"] == "mnist-fast"


def test_large_photos_transfer_when_weights_exist_else_train_small(monkeypatch, tmp_path):
    values, why = choose(_info((333, 500)), 245, "photos", "cpu", str(tmp_path / "r18.pth"))
    assert values["model.name"] == "resnet18" and values["train.freeze_epochs"] == 1 and "r18.pth" in why
    monkeypatch.setattr(recipe, "pretrained_available", lambda name: (False, "offline"))
    values, why = choose(_info((333, 500)), 245, "photos", "cpu", None)
    assert values["model.name"] == "photo-fast" and values["data.image_size"] == 64
    assert "offline" in why and "--model.weights" in why


def test_given_settings_win_over_the_recipe(image_folder):
    config = load_config(None, {"data.dataset": f"folder:{image_folder}", "train.lr": 0.02, "train.epochs": 2})
    plan = resolve(config, {"train.lr", "data.image_size"})
    assert plan.config.model.name == "photo-fast"
    assert plan.config.train.lr == 0.02  # the default value, but given: kept
    assert plan.config.train.epochs == 2  # not the default: kept even without naming it
    assert plan.config.data.image_size is None and plan.config.train.optimizer == "sgd"
    assert "kept your data.image_size, train.epochs, train.lr" in plan.notes[0]


def test_imbalanced_classes_get_a_weighted_loss(tmp_path, write_image):
    for i in range(40):
        write_image(tmp_path / ("many" if i < 32 else "few") / f"{i}.png", size=(16, 16), seed=i)
    plan = resolve(load_config(None, {"data.dataset": f"folder:{tmp_path}"}))
    assert plan.config.train.class_weights and "4x apart" in plan.notes[0]


def test_random_weights_are_never_frozen_or_slowed():
    folder_recipe = load_config(CONFIGS / "folder.yaml", {"model.pretrained": False})
    assert folder_recipe.train.freeze_epochs == 1 and folder_recipe.train.backbone_lr == 0.1
    plan = resolve(folder_recipe)
    assert plan.config.train.freeze_epochs == 0 and plan.config.train.backbone_lr == 1.0
    assert "train.freeze_epochs 1 -> 0" in plan.notes[0] and "train.backbone_lr 0.1 -> 1.0" in plan.notes[0]
    assert resolve(load_config(CONFIGS / "folder.yaml")).config.train.freeze_epochs == 1  # pretrained: unchanged
    frozen = resolve(load_config(None, {"model.name": "cnn", "model.freeze": "backbone"}))
    assert frozen.config.model.freeze == "none" and "model.freeze backbone -> none" in frozen.notes[0]


def test_train_prints_its_choice_and_saves_a_rerunnable_config(tmp_path, write_image, capsys):
    root = tmp_path / "photos"
    for label, shade in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        for i in range(24):
            pixels = np.clip(np.random.default_rng(i).normal(shade, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            root.joinpath(label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    code = main(["train", "--dataset", f"folder:{root}", "--out", str(tmp_path / "runs"), "--name", "auto",
                 "--epochs", "2", "--data.num_workers", "0", "-q"])
    out = capsys.readouterr().out
    assert code == 0
    for shown in ("photo-fast (", "parameters", "3x32x32", "2 (blue, red)", "38 train, 6 val, 4 test", "per epoch",
                  "small photos (32 px)", "kept your train.epochs"):
        assert shown in out
    saved = yaml.safe_load((tmp_path / "runs" / "auto" / "config.yaml").read_text())
    assert saved["model"]["name"] == "photo-fast" and saved["train"]["optimizer"] == "sgd"
    assert saved["data"]["image_size"] == 32 and saved["train"]["epochs"] == 2
    rerun = resolve(load_config(tmp_path / "runs" / "auto" / "config.yaml"))
    assert rerun.config == load_config(tmp_path / "runs" / "auto" / "config.yaml") and not rerun.notes


def test_flip_tta_averages_the_mirrored_logits():
    torch.manual_seed(0)
    model = create_model("photo-fast", 3, 3, 16, widths=(8, 16)).eval()
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    pre = Preprocess((16, 16), 3, (0.5,) * 3, (0.25,) * 3)
    split = TensorSplit(images, torch.zeros(5, dtype=torch.long))
    plain = predict_logits(model, split, pre, torch.device("cpu"))
    mirrored = predict_logits(model, TensorSplit(images.flip(-1), split.labels), pre, torch.device("cpu"))
    tta = predict_logits(model, split, pre, torch.device("cpu"), tta=True)
    assert np.allclose(tta, (plain + mirrored) / 2, atol=1e-5) and not np.allclose(tta, plain, atol=1e-3)


def test_a_named_model_gets_its_recipe_settings_from_the_command_line(image_folder):
    keys = {"data.dataset": f"folder:{image_folder}", "model.name": "resnet18", "model.weights": "r18.pth"}
    plan = resolve(load_config(None, keys), set(keys), named=True)  # what `imgclf train --model resnet18` passes
    train = plan.config.train
    assert plan.config.model.name == "resnet18" and plan.config.model.weights == "r18.pth"
    # 16 training images: the batch is capped to what they fill
    assert (train.batch_size, train.optimizer, train.freeze_epochs, train.backbone_lr) == (16, "adamw", 1, 0.1)
    assert not plan.config.model.pretrained and "fine-tuning recipe for resnet18" in plan.notes[0]
    assert resolve(load_config(None, keys)).config.train.batch_size == 256  # from Python: only what was asked
    assert resolve(load_config(None, keys), set(keys)).config.train.batch_size == 256  # named in a recipe file
    named = resolve(load_config(None, {**keys, "model.name": "photo-fast", "model.weights": None}), {"model.name"},
                    named=True)
    assert named.config.train.optimizer == "sgd" and named.config.data.image_size == 32


def test_model_auto_given_explicitly_is_still_chosen(image_folder):
    keys = {"data.dataset": f"folder:{image_folder}", "model.name": "auto"}  # as tune's best.yaml has it
    assert resolve(load_config(None, keys), set(keys)).config.model.name == "photo-fast"
