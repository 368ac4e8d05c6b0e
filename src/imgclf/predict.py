"""Run a trained model: logits over a whole split, or classes of image files, with its saved preprocessing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from imgclf.data import Preprocess, Split, batches
from imgclf.data.transforms import read_image
from imgclf.rundir import preprocess_of
from imgclf.runtime import open_model


def predict_logits(model: torch.nn.Module, split: Split, preprocess: Preprocess, device: torch.device,
                   batch_size: int = 500, num_workers: int = 0, progress: bool = False, tta: bool = False
                   ) -> np.ndarray:
    """(N, K) float32 logits of `model` (put in eval mode) on every image of `split`, in order; `tta`
    (test-time augmentation) averages them with the logits of the mirrored images."""
    chunks = []
    model.eval()
    with torch.no_grad():
        for x, _ in tqdm(batches(split, preprocess, batch_size, device=device, num_workers=num_workers),
                         desc="predicting", unit="batch", total=math.ceil(len(split) / batch_size), leave=False,
                         disable=not progress):
            chunks.append(forward(model, x, tta).cpu())
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)


def forward(model: torch.nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """float32 logits of a batch; `tta`: the mean with those of the horizontally mirrored batch."""
    logits = model(x).float()
    return (logits + model(x.flip(-1)).float()) / 2 if tta else logits


def predict_files(run: str | Path, paths: list[Path], top: int = 3, tta: bool = False
                  ) -> list[list[tuple[str, float]]]:
    """For each image, the `top` (class, probability) pairs, most likely first; `run` is a run directory or
    an exported model file. `tta`: average with the mirrored image (test-time augmentation)."""
    model, meta = open_model(run)
    preprocess = preprocess_of(meta)
    images = [preprocess(read_image(path).unsqueeze(0)) for path in paths]
    with torch.no_grad():
        # softmax at inference, at the temperature `imgclf evaluate --calibrate` fitted (1: none)
        probs = torch.softmax(forward(model, torch.cat(images), tta) / meta.get("temperature", 1.0), dim=1)
    values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
    classes = meta["classes"]
    return [[(classes[i], float(v)) for v, i in zip(vs, ix, strict=True)]
            for vs, ix in zip(values.tolist(), indices.tolist(), strict=True)]
