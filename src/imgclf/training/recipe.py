"""A recipe chosen from the data: `--model auto` looks at the images and picks model, input, augmentation and
training settings; settings the user gave always win. Also keeps random weights from being frozen."""

from __future__ import annotations

import logging
import math
import os
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch

from imgclf.config import Config, with_overrides
from imgclf.data import Augment, augment_preset, describe, load_dataset, train_val
from imgclf.device import pick_device
from imgclf.models import create_model, model_entry

log = logging.getLogger(__name__)
AUTO = "auto"
_TRANSFER = "resnet18"  # the pretrained backbone the recipe uses for larger photos


@dataclass
class Plan:
    """A resolved config and what the user should know about it before training starts."""

    config: Config
    notes: list[str] = field(default_factory=list)  # what was chosen automatically or changed, and why
    facts: dict[str, str] = field(default_factory=dict)  # model, input, classes, splits, ... for the summary
    train_images: int | None = None  # the training split's size, where the data was read to choose

    def lines(self) -> list[str]:
        """The plan as short lines for a terminal."""
        width = max(map(len, self.facts), default=0)
        return [f"{key:<{width}}  {value}" for key, value in self.facts.items()] + [f"note: {n}" for n in self.notes]


def resolve(config: Config, given: set[str] | None = None, *, summary: bool = False, named: bool = False) -> Plan:
    """`config` with `model.name: auto` replaced by a recipe chosen from the data, and with no frozen or slowed
    random backbone (the one exception to: keys in `given`, or set to a non-default value, are kept). `named`: the
    model was named on the command line, and gets the recipe's settings for it (photo-fast, or a backbone with
    weights). `summary` also fills the plan's facts: model, parameters, input, classes, splits, device and the
    estimated time per epoch."""
    notes: list[str] = []
    data, model = config.data, config.model
    dataset = train = val = None
    if model.name == AUTO or summary or named:
        dataset = load_dataset(data.dataset, data.data_dir, fractions=data.fractions(), seed=data.split_seed,
                               strict=data.strict)
        train, val = train_val(dataset, data.subset, data.val_fraction, data.split_seed, data.folds, data.fold)
        info = describe(dataset)  # once: for MNIST-sized data it reads every image
        if model.name == AUTO:
            choice, why = choose(info, len(train), dataset.kind, config.train.device, model.weights)
            counts = [n for n in info["splits"]["train"]["per_class"].values() if n]
            if max(counts) > 3 * min(counts):  # rare classes would count for little in the loss
                choice["train.class_weights"] = True
                why += f"; classes up to {max(counts) / min(counts):.0f}x apart in size: the loss is weighted by class"
        else:
            choice, why = settings_for(model.name, model.pretrained or bool(model.weights), info,
                                       len(train), config.train.device) if named else ({}, "")
        if choice:  # the model's name is the recipe's to choose even when "auto" was given explicitly
            kept = sorted(k for k in choice if k != "model.name" and k in (given or set()) | _changed(config))
            config = with_overrides(config, {k: v for k, v in choice.items() if k not in kept})
            notes.append(why + (f"; kept your {', '.join(kept)}" if kept else ""))
    config, fixed = _no_random_freeze(config)
    plan = Plan(config, notes + fixed, train_images=None if train is None else len(train))
    if summary:
        plan.facts = _facts(config, dataset, info, train, val)
    return plan


def _facts(config: Config, dataset, info: dict, train, val) -> dict[str, str]:
    channels = config.data.channels or info["channels"]
    augment = augment_preset(dataset.kind if config.data.augment == "auto" else config.data.augment)
    params, seconds = estimate(config, len(dataset.classes), channels, len(train), len(val or ()), augment)
    size = config.data.image_size or model_entry(config.model.name).default_size
    names = ", ".join(dataset.classes[:8]) + (" ..." if len(dataset.classes) > 8 else "")
    splits = {"train": len(train), "val": len(val or ()), "test": len(dataset.splits.get("test", ()))}
    weights = config.model.weights or ("pretrained (ImageNet)" if config.model.pretrained else
                                       f"from run {config.model.init}" if config.model.init else "random")
    return {"model": f"{config.model.name} ({params:,} parameters, weights: {weights})",
            "input": f"{channels}x{size}x{size}", "classes": f"{len(dataset.classes)} ({names})",
            "images": ", ".join(f"{n:,} {name}" for name, n in splits.items()),
            "training": f"{config.train.epochs:g} epochs of batch {config.train.batch_size}, {config.train.optimizer} "
                        f"lr {config.train.lr:g} ({config.train.schedule}), {config.train.precision}",
            "device": f"{pick_device(config.train.device)} ({torch.get_num_threads()} threads)",
            "estimate": f"about {_duration(seconds)} per epoch, {_duration(seconds * config.train.epochs)} in all "
                        "(from timed steps)"}


def _duration(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 90 else f"{seconds / 60:.1f} min"


def choose(info: dict, count: int, kind: str, device: str, weights: str | None) -> tuple[dict[str, object], str]:
    """Config values for data described by `info` (describe()) with `count` training images, and why."""
    side = min(info["size"])  # typical (most common) image size
    gray = info["channels"] == 1
    if weights:  # a weights file is for the transfer backbone, whatever the size of the images
        return {**_transfer(count, device), "model.pretrained": False}, f"weights from {weights}: {_TRANSFER}"
    if kind == "digits" or (gray and side <= 32):
        return {"model.name": "mnist-fast"}, "small single-channel images: mnist-fast, the fast MNIST recipe"
    if side > 64:
        available, reason = pretrained_available(_TRANSFER)
        if available:
            return {**_transfer(count, device), "model.pretrained": True}, (
                f"photos of about {info['size'][1]}x{info['size'][0]} px and {reason}: transfer learning from "
                f"{_TRANSFER}")
        recipe = photo_fast_recipe(count, 64, device)
        return recipe, (f"photos of about {info['size'][1]}x{info['size'][0]} px, but {reason}: photo-fast from "
                        "scratch at 64x64 (pretrained weights do much better on few images: run once with "
                        f"internet, or pass --model {_TRANSFER} --model.weights FILE)")
    size = 32 if side <= 40 else 64
    why = f"small photos ({side} px): photo-fast at {size}x{size}, from scratch"
    return photo_fast_recipe(count, size, device), why


def settings_for(name: str, weights: bool, info: dict, count: int, device: str) -> tuple[dict[str, object], str]:
    """The recipe's settings for a model the user named (none for models without a recipe here)."""
    if name == "photo-fast":
        size = 32 if min(info["size"]) <= 40 else 64
        return photo_fast_recipe(count, size, device), f"photo-fast's recipe for {count:,} images at {size}x{size}"
    if weights and model_entry(name).pretrained:
        return _transfer(count, device, name), f"the fine-tuning recipe for {name} with weights"
    return {}, ""


def photo_fast_recipe(count: int, size: int, device: str) -> dict[str, object]:
    """The fast small-photo recipe (see BENCHMARKS.md): SGD with Nesterov momentum, a one-cycle schedule, label
    smoothing 0.2, flips and small shifts, an average of the weights over the last ~50 steps (validated and
    saved), bf16 where the processor computes it natively."""
    batch = min(512 if count >= 8192 else max(32, 2 ** int(math.log2(max(1, count // 16)))), _fits(count))
    return {"model.name": "photo-fast", "data.image_size": size, "data.augment": "light" if count >= 10_000 else
            "photos", "train.batch_size": batch, "train.optimizer": "sgd", "train.lr": round(0.4 * batch / 512, 4),
            "train.weight_decay": 5e-4, "train.momentum": 0.9, "train.nesterov": True, "train.schedule": "onecycle",
            "train.label_smoothing": 0.2, "train.ema": 0.98, "train.precision": _fast_precision(device),
            "train.epochs": float(min(40, max(10, round(320_000 / max(1, count))))), "train.channels_last": True}


def _fits(count: int) -> int:
    """The largest power of two that is at most `count` (a batch the training images fill)."""
    return 2 ** int(math.log2(max(1, count)))


def _transfer(count: int, device: str, name: str = _TRANSFER) -> dict[str, object]:
    """Fine-tuning a pretrained backbone: the head alone for an epoch, then everything at a tenth of the lr."""
    return {"model.name": name, "train.batch_size": min(32, _fits(count)),
            "data.image_size": 224 if pick_device(device).type == "cuda" else 160, "data.augment": "photos",
            "train.optimizer": "adamw", "train.lr": 1e-3, "train.schedule": "cosine",
            "train.warmup": 0.5, "train.label_smoothing": 0.1, "train.epochs": 10.0 if count < 5000 else 5.0,
            "train.freeze_epochs": 1, "train.backbone_lr": 0.1, "train.precision": _fast_precision(device),
            "train.channels_last": True}


def _fast_precision(device: str) -> str:
    """bf16 where the device computes it natively (about 2x faster on such CPUs: AVX512-BF16 or AMX), else fp32
    (a CPU without those instructions emulates bf16, slower than fp32)."""
    kind = pick_device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = kind == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return "bf16" if native else "fp32"


def pretrained_available(name: str) -> tuple[bool, str]:
    """Whether `name`'s ImageNet weights can be had (torch's cache, or a download), and why. Under torchrun only
    the cache counts: every process must make the same choice, and a network check could differ."""
    from torchvision.models import get_model_weights

    url = get_model_weights(name).DEFAULT.url
    if (Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]).is_file():
        return True, "ImageNet weights in torch's cache"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return False, "no ImageNet weights in torch's cache (not downloaded under torchrun)"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5).close()
        return True, "ImageNet weights downloadable"
    except OSError as err:
        return False, f"no pretrained weights could be had ({getattr(err, 'reason', err)})"


def _changed(config: Config) -> set[str]:
    """Dotted keys whose values differ from the defaults (set by the user, whichever way)."""
    ours, default = config.to_dict(), Config().to_dict()
    return {f"{s}.{k}" for s in ("data", "model", "train") for k in ours[s] if ours[s][k] != default[s][k]}


def _no_random_freeze(config: Config) -> tuple[Config, list[str]]:
    """Freezing or slowing layers only helps weights that learned something: random ones must train at full lr."""
    model, cfg = config.model, config.train
    if model.pretrained or model.weights or model.init:
        return config, []
    changes = {k: v for k, v, now in (("train.freeze_epochs", 0, cfg.freeze_epochs),
                                      ("train.backbone_lr", 1.0, cfg.backbone_lr if cfg.freeze_epochs else 1.0),
                                      ("model.freeze", "none", model.freeze)) if now != v}
    if not changes:
        return config, []
    was = {"train.freeze_epochs": cfg.freeze_epochs, "train.backbone_lr": cfg.backbone_lr, "model.freeze": model.freeze}
    return with_overrides(config, changes), [
        f"{model.name} starts from random weights (model.pretrained false, no model.weights), so nothing is frozen "
        "or slowed: " + ", ".join(f"{k} {was[k]} -> {v}" for k, v in changes.items())]


def estimate(config: Config, num_classes: int, channels: int, train_count: int, val_count: int = 0,
             augment: Augment | None = None) -> tuple[int, float]:
    """(parameters, estimated seconds per epoch) of the config's model: timed steps (augmentation included) of
    at most 128 random images, scaled to the epoch, plus validation at a third of a step per image. Loads
    model.weights, so a file that does not fit fails here, before any training."""
    cfg = config.train
    device = pick_device(cfg.device)
    size = config.data.image_size or model_entry(config.model.name).default_size
    model = create_model(config.model.name, num_classes, channels, size, weights=config.model.weights,
                         **config.model.options).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    batch = min(cfg.batch_size, 128)
    x = torch.rand(batch, channels, size, size, device=device)
    y = torch.randint(num_classes, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16 if cfg.precision == "bf16" else torch.float16,
                              enabled=cfg.precision != "fp32")
    times = []
    for _ in range(4):  # the first steps set up the kernels for these shapes and are not counted
        start = time.perf_counter()
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(augment(x) if augment else x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()  # else only the kernel launches would be timed
        times.append(time.perf_counter() - start)
    per_image = min(times[2:]) / batch
    params = sum(p.numel() for p in model.parameters())
    return params, per_image * ((train_count // cfg.batch_size) * cfg.batch_size + val_count / 3)
