"""The learning-rate range test: raise the rate exponentially for some steps and watch the loss."""

from __future__ import annotations

import logging
import math

import torch
from tqdm import tqdm

from imgclf.config import Config
from imgclf.data import batches
from imgclf.training.loop import check_settings
from imgclf.training.parts import build_parts
from imgclf.training.recipe import resolve

log = logging.getLogger(__name__)
MAX_STEPS, MIN_STEPS, EPOCHS = 100, 20, 3  # default sweep: 3 epochs of batches, within 20 to 100 steps


def default_steps(images: int, batch_size: int) -> int:
    """Steps of a sweep that gives a clear curve on large data and takes seconds on small data."""
    return min(MAX_STEPS, max(MIN_STEPS, EPOCHS * max(1, images // batch_size)))


def lr_find(config: Config, steps: int | None = None, start: float = 1e-6, end: float = 1.0,
            progress: bool = True) -> tuple[list[float], list[float], float]:
    """(learning rates, smoothed losses, suggested rate): the rate at the lowest loss divided by 10,
    a common rule of thumb. Stops early once the loss exceeds 4x its lowest value. Nothing is saved.
    `steps`: default_steps of the training data. Each step is a training step (the same loss, precision
    and clipping), without adversarial examples."""
    config = resolve(config).config  # model auto: the recipe's model and settings
    check_settings(config)
    parts = build_parts(config)
    model, optimizer = parts.model.train(), parts.optimizer
    steps = steps or default_steps(len(parts.train_split), config.train.batch_size)
    # keep backbone_lr; "initial_lr" is each group's rate before the schedule (e.g. one-cycle's warm-up) lowered it
    ratios = [group.get("initial_lr", group["lr"]) / config.train.lr for group in optimizer.param_groups]
    generator = torch.Generator().manual_seed(config.train.seed)
    order = torch.randperm(len(parts.train_split), generator=generator).repeat(
        math.ceil(steps * config.train.batch_size / len(parts.train_split)))
    lrs, losses, smooth, lowest = [], [], 0.0, math.inf
    stream = batches(parts.train_split, parts.preprocess, config.train.batch_size, order=order,
                     augment=parts.augment, generator=generator, device=parts.device, drop_last=True)
    sweep = zip(range(steps), stream, strict=False)  # the order repeats enough for `steps`
    with tqdm(sweep, total=steps, desc="lr range test", unit="step", leave=False, disable=not progress) as bar:
        for i, (x, y) in bar:
            lr = start * (end / start) ** (i / max(1, steps - 1))
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            _, loss = parts.batch_loss(model, x, y)
            parts.update(loss)
            smooth = 0.9 * smooth + 0.1 * loss.item()  # exponential smoothing, bias-corrected below
            value = smooth / (1 - 0.9 ** (i + 1))
            if not math.isfinite(value) or value > 4 * lowest:
                break
            lowest = min(lowest, value)
            lrs.append(lr)
            losses.append(value)
    suggestion = lrs[losses.index(min(losses))] / 10
    log.info("lr range test: %d steps from %.1e to %.1e; lowest loss %.4f at %.2e", len(lrs), lrs[0], lrs[-1],
             min(losses), suggestion * 10)
    return lrs, losses, suggestion
