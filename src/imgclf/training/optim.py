"""Optimizers with decay only where it belongs, and learning-rate schedules."""

from __future__ import annotations

import math

import torch

from imgclf.config import TrainConfig
from imgclf.models import Classifier


def make_optimizer(model: Classifier, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Four groups: (body, head) x (decayed weights, undecayed biases and norms); the body's lr is
    scaled by backbone_lr when the run starts with frozen epochs (discriminative learning rates)."""
    body_scale = cfg.backbone_lr if cfg.freeze_epochs else 1.0
    groups = []
    for part, scale in ((model.body, body_scale), (model.head, 1.0)):
        params = list(part.parameters())
        for decay, chosen in ((cfg.weight_decay, [p for p in params if p.ndim > 1]),
                              (0.0, [p for p in params if p.ndim <= 1])):
            if chosen:
                groups.append({"params": chosen, "weight_decay": decay, "lr": cfg.lr * scale})
    name = cfg.optimizer  # one of config.Optimizer
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)


def make_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int, total_steps: int):
    """The lr scheduler, and whether it steps per batch (True) or per epoch with the monitored value."""
    name = cfg.schedule  # one of config.Schedule
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), True
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_epochs * steps_per_epoch, cfg.gamma), True
    if name == "plateau":
        mode = "min" if cfg.monitor == "val_loss" else "max"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode, cfg.gamma, cfg.plateau_patience), False
    if name == "cosine":
        warm = round(cfg.warmup * steps_per_epoch)

        def factor(step: int) -> float:  # linear warm-up, then half a cosine down to zero
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True
    peaks = [group["lr"] for group in optimizer.param_groups]  # onecycle
    # OneCycleLR divides by its warm-up length: at least 8 steps keep that at 1 or more
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, peaks, total_steps=max(total_steps, 8),
                                               pct_start=0.25, cycle_momentum=False), True


