"""Classify image files with a trained model, using the preprocessing saved with it."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from imgclf.data.transforms import UNREADABLE, image_to_tensor
from imgclf.errors import ImgclfError
from imgclf.rundir import load_model, preprocess_of


def predict_files(run: str | Path, paths: list[Path], top: int = 3) -> list[list[tuple[str, float]]]:
    """For each image, the `top` (class, probability) pairs, most likely first."""
    model, meta = load_model(run)
    preprocess = preprocess_of(meta)
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(preprocess(image_to_tensor(image).unsqueeze(0)))
        except UNREADABLE as err:
            raise ImgclfError(f"cannot read image {path}: {err}.") from err
    with torch.no_grad():
        # softmax at inference, at the temperature `imgclf evaluate --calibrate` fitted (1: none)
        probs = torch.softmax(model(torch.cat(images)).float() / meta.get("temperature", 1.0), dim=1)
    values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
    classes = meta["classes"]
    return [[(classes[i], float(v)) for v, i in zip(vs, ix, strict=True)]
            for vs, ix in zip(values.tolist(), indices.tolist(), strict=True)]
