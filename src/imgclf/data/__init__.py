"""The data layer: datasets by name or folder, preprocessing, augmentation, splits and batches."""

from __future__ import annotations

import difflib
from pathlib import Path

from imgclf.data.core import Dataset, FileSplit, Split, TensorSplit, channel_stats, describe
from imgclf.data.folder import load_folder, load_unlabelled, with_extra
from imgclf.data.loader import batches, images_at, in_memory, to_memory
from imgclf.data.named import NAMES, load_named
from imgclf.data.splits import kfold, stratified_split, train_val
from imgclf.data.transforms import (
    AUGMENT_PRESETS,
    Augment,
    Preprocess,
    augment_preset,
    image_to_tensor,
    strong_augment,
    synthetic_outliers,
)
from imgclf.errors import DataError

__all__ = ["AUGMENT_PRESETS", "Augment", "Dataset", "FileSplit", "Preprocess", "Split", "TensorSplit",
           "augment_preset", "batches", "channel_stats", "default_preprocess", "describe", "image_to_tensor",
           "images_at", "in_memory", "kfold", "load_dataset", "load_unlabelled", "stratified_split", "strong_augment",
           "synthetic_outliers", "to_memory", "train_val", "with_extra"]


def load_dataset(source: str, data_dir: str | Path | None = None, *, allow_download: bool = True,
                 fractions: dict[str, float] | None = None, seed: int = 0, strict: bool = False) -> Dataset:
    """A dataset by name ('mnist', 'digits', ...) or 'folder:PATH'; fractions and seed split a plain folder."""
    if source.startswith("folder:"):
        return load_folder(Path(source.removeprefix("folder:")).expanduser(), fractions, seed, strict)
    name = source.lower()
    if name not in NAMES:
        close = difflib.get_close_matches(name, NAMES, n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise DataError(f"unknown dataset {source!r}; {hint}known: {', '.join(NAMES)}, "
                        "or folder:PATH for a folder of <class>/<image> subfolders.")
    return load_named(name, Path(data_dir).expanduser() if data_dir else None, allow_download)


def default_preprocess(dataset: Dataset, stats_limit: int = 2000) -> Preprocess:
    """Preprocessing at the training split's own size, channels and mean/std (size: the most common one)."""
    info = describe(dataset, stats_limit)
    return Preprocess(size=info["size"], channels=info["channels"], mean=info["mean"], std=info["std"])
