"""A Keras-style summary: each layer's output shape and parameters, totals, multiply-adds and size."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from imgclf.models.base import Classifier


@dataclass
class Summary:
    rows: list[tuple[str, str, tuple[int, ...], int]]  # (name, type, output shape without batch, params)
    total: int
    trainable: int
    macs: int  # multiply-adds for one image (convolutions and matrix products)
    size_mb: float  # parameters and buffers, in MiB

    def table(self) -> str:
        """The summary as fixed-width text."""
        lines = [("Layer (type)", "Output Shape", "Param #")]
        lines += [(f"{name} ({kind})", "(None, " + ", ".join(map(str, shape)) + ")", f"{params:,}")
                  for name, kind, shape, params in self.rows]
        w0, w1 = (max(len(line[i]) for line in lines) + 2 for i in (0, 1))
        w2 = max(len(line[2]) for line in lines)
        rule = "=" * (w0 + w1 + w2)
        text = [rule, f"{lines[0][0]:<{w0}}{lines[0][1]:<{w1}}{lines[0][2]:>{w2}}", rule]
        text += [f"{a:<{w0}}{b:<{w1}}{c:>{w2}}" for a, b, c in lines[1:]]
        text += [rule, f"Total params: {self.total:,}", f"Trainable params: {self.trainable:,}",
                 f"Non-trainable params: {self.total - self.trainable:,}",
                 f"Multiply-adds per image: {self.macs:,} ({self.macs / 1e6:,.1f} M)",
                 f"Model size: {self.size_mb:,.2f} MiB (float32 parameters and buffers)", rule]
        return "\n".join(text)


def summarize(model: nn.Module, input_shape: tuple[int, int, int]) -> Summary:
    """Run one (1, C, H, W) zero batch through `model` in eval mode, recording each leaf layer's output.

    Works on the meta device too (no memory, no compute), which is how the CLI sizes big models."""
    rows: dict[str, tuple[str, str, tuple[int, ...], int]] = {}

    def record(name: str):
        def hook(module: nn.Module, _inputs, output) -> None:
            if name not in rows and isinstance(output, torch.Tensor):  # a layer used twice is listed once
                params = sum(p.numel() for p in module.parameters(recurse=False))
                rows[name] = (name, type(module).__name__, tuple(output.shape[1:]), params)
        return hook

    leaves = [(n, m) for n, m in model.named_modules() if n and not any(m.children())]
    handles = [m.register_forward_hook(record(n)) for n, m in leaves]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    params = list(model.parameters())
    size = sum(t.numel() * t.element_size() for t in [*params, *model.buffers()])
    return Summary(list(rows.values()), sum(p.numel() for p in params),
                   sum(p.numel() for p in params if p.requires_grad), counter.get_total_flops() // 2, size / 2**20)


def map_sides(model: Classifier) -> list[tuple[str, int, bool]]:
    """(name, smaller side of its (B, C, H, W) output, whether it has weights of its own) for each module, in
    the order they run on one zero image of the model's input size; modules with other outputs are left out."""
    seen: list[tuple[str, int, bool]] = []

    def record(name: str):
        def hook(module: nn.Module, _inputs, output) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                seen.append((name, min(output.shape[-2:]), any(True for _ in module.parameters(recurse=False))))
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    was_training = model.training
    model.eval()
    try:
        first = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, model.input_spec.channels, *model.input_spec.size, device=first.device,
                              dtype=first.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def collapsed_note(model: Classifier) -> str | None:
    """A warning when the input is so small that the model's last layers with weights see 1x1 maps (they
    cannot tell where anything is, and Grad-CAM there is flat); None when every such layer sees more."""
    sides = map_sides(model)
    weighted = [(name, side) for name, side, own in sides if own]
    # the layers after the last one that still sees more than 1x1 (a squeeze-excitation block's 1x1 convs,
    # followed by larger maps again, are 1x1 by design)
    last = max((i for i, (_, side) in enumerate(weighted) if side > 1), default=-1)
    flat = [name for name, _ in weighted[last + 1:]]
    if not flat:
        return None
    size = model.input_spec.size
    # the smallest side so far divides the input by at least this much; 4x that gives the last maps 4x4
    stride = max(min(size) // max(side, 1) for _, side, _ in sides)
    return (f"at {size[0]}x{size[1]} px the model's last {len(flat)} layers with weights (from {flat[0]} on) see 1x1 "
            f"feature maps, so they cannot tell where anything is and Grad-CAM falls back to an earlier layer; "
            f"train at an image size of at least {4 * stride} (data.image_size) to keep them spatial.")
