"""Run a trained model: logits over a whole split, or classes of image files, with its saved preprocessing."""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from imgclf import openset
from imgclf.data import Preprocess, Split, batches
from imgclf.data.folder import IMAGE_SUFFIXES
from imgclf.data.transforms import read_image
from imgclf.errors import DataError, ImgclfError
from imgclf.rundir import preprocess_of
from imgclf.runtime import device_for, open_model


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


@dataclass
class Prediction:
    """One image's classes, most likely first, or why it could not be classified."""

    path: Path
    top: list[tuple[str, float]]  # (class, probability); empty when `error` says what went wrong
    error: str | None = None
    unknown: bool = False  # unlike the training data (predict_files with unknown=True)
    unknown_score: float | None = None


def image_paths(inputs: list[str | Path]) -> list[Path]:
    """The files to classify: a folder stands for every image under it (recursively, hidden files left out), a
    pattern with * ? or [ for the files it matches (** spans folders), anything else for itself."""
    found: list[Path] = []
    for text in map(str, inputs):
        if os.path.isdir(text):
            found += sorted((p for p in Path(text).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                             and not any(part.startswith(".") for part in p.relative_to(text).parts)),
                            key=lambda p: p.parts)
        elif glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise ImgclfError(f"no file matches {text}; check the pattern (quote it so the shell passes it "
                                  "as it is).")
            found += [Path(m) for m in matches if os.path.isfile(m)]
        else:
            found.append(Path(text))
    return found


def predict_files(run: str | Path, paths: list[Path], top: int = 3, tta: bool = False, *, batch_size: int = 64,
                  device: str = "auto", progress: bool = False, unknown: bool = False,
                  unknown_rate: float | None = None) -> list[Prediction]:
    """For each image in order, the `top` (class, probability) pairs, or the reason it could not be read; `run`
    is a run directory or an exported model file. Images go through the model `batch_size` at a time on
    `device`; `tta`: averaged with the mirrored image (test-time augmentation). `unknown`: score each image
    with the run's unknown-input detection and mark those above its threshold (`unknown_rate` of validation
    images; None: as fitted)."""
    model, meta = open_model(run)
    target = device_for(model, device)
    model = model.to(target).eval()
    preprocess, classes = preprocess_of(meta), meta["classes"]
    fitted = openset.required(run, model, meta, unknown_rate) if unknown else None
    threshold = fitted.threshold() if fitted else None
    results = []
    for start in tqdm(range(0, len(paths), batch_size), desc="predicting", unit="batch", leave=False,
                      disable=not progress or len(paths) <= batch_size):
        images, read = [], []
        for path in paths[start:start + batch_size]:
            results.append(Prediction(path, []))
            try:
                images.append(preprocess(read_image(path).unsqueeze(0)))
                read.append(results[-1])
            except DataError as err:  # reported on its own line; the other images go on
                results[-1].error = str(err)
        if images:
            with torch.no_grad():
                x = torch.cat(images).to(target)
                if fitted:
                    features, logits = openset.forward(model, x, tta)
                    scores = fitted.scores(logits, features)[fitted.method].tolist()
                else:
                    logits, scores = forward(model, x, tta), [None] * len(read)
                logits = logits.cpu()
            # softmax at inference, at the temperature `imgclf evaluate --calibrate` fitted (1: none)
            values, indices = torch.softmax(logits / meta.get("temperature", 1.0), dim=1).topk(
                min(top, len(classes)), dim=1)
            for prediction, vs, ix, score in zip(read, values.tolist(), indices.tolist(), scores, strict=True):
                prediction.top = [(classes[i], float(v)) for v, i in zip(vs, ix, strict=True)]
                prediction.unknown_score = score
                prediction.unknown = score is not None and score > threshold
    return results

