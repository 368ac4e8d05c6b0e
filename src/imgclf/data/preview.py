"""A labelled grid of sample images: one row per class, its name on the left."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from imgclf.data.core import Split

_TILE = 64  # pixels per sample in the grid; small images are scaled up with nearest neighbour
_GAP = 4


def preview_grid(split: Split, classes: list[str], per_class: int = 8, max_classes: int = 20,
                 seed: int = 0) -> Image.Image:
    """Up to `per_class` random samples for each of the first `max_classes` classes, as one RGB image."""
    rng = np.random.default_rng(seed)
    labels = split.labels.numpy()
    shown = list(range(min(len(classes), max_classes)))
    font = ImageFont.load_default(size=14)
    label_width = max(int(font.getlength(classes[c])) for c in shown) + 2 * _GAP
    step = _TILE + _GAP
    grid = Image.new("RGB", (label_width + per_class * step, len(shown) * step + _GAP), "white")
    draw = ImageDraw.Draw(grid)
    for row, c in enumerate(shown):
        top = _GAP + row * step
        draw.text((_GAP, top + _TILE // 2), classes[c], fill="black", font=font, anchor="lm")
        members = np.flatnonzero(labels == c)
        for col, i in enumerate(rng.choice(members, min(per_class, len(members)), replace=False)):
            grid.paste(_tile(split[int(i)][0]), (label_width + col * step, top))
    return grid


def _tile(image: torch.Tensor) -> Image.Image:
    """uint8 (C, H, W) -> a PIL image fitted into a _TILE square, aspect kept."""
    pil = Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy()).convert("RGB")
    scale = _TILE / max(pil.size)
    size = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    return pil.resize(size, resample)
