"""Seeded, stratified splits: fixed fractions per class, and k folds for cross-validation."""

from __future__ import annotations

import math

import numpy as np

from imgclf.data.core import Dataset, Split
from imgclf.errors import DataError


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int = 0) -> dict[str, np.ndarray]:
    """Indices per named part, each class cut in the given proportions (rounded per class)."""
    values = list(fractions.values())
    if not values or not all(math.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0:
        raise DataError(f"split fractions must be non-negative and not all zero, got {fractions}.")
    shares = np.array(list(fractions.values()), dtype=float) / sum(fractions.values())
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in fractions}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        ideal = shares * len(members)
        counts = np.floor(ideal).astype(int)
        leftover = len(members) - counts.sum()  # largest remainders get one more, ties to the earlier part
        counts[np.argsort(-(ideal - counts), kind="stable")[:leftover]] += 1
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for name, start, stop in zip(fractions, bounds[:-1], bounds[1:], strict=True):
            parts[name].append(members[start:stop])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def kfold(labels: np.ndarray, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train, validation) index pairs; every sample is validated exactly once, classes balanced."""
    counts = np.bincount(labels)
    smallest = int(np.flatnonzero(counts)[np.argmin(counts[counts > 0])])
    if k < 2:
        raise DataError(f"k-fold needs k >= 2, got {k}.")
    if counts[smallest] < k:
        raise DataError(f"class {smallest} has only {counts[smallest]} samples, fewer than k={k} folds; "
                        f"use k <= {counts[smallest]} or add samples.")
    from sklearn.model_selection import StratifiedKFold  # imported here: scikit-learn takes seconds to load

    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(folds.split(np.zeros(len(labels)), labels))


def train_val(dataset: Dataset, subset: int | None = None, val_fraction: float = 0.1, seed: int = 0,
              folds: int | None = None, fold: int = 0) -> tuple[Split, Split | None]:
    """The (train, validation) pair a run trains on, from the first `subset` training images: with `folds`,
    fold `fold` of that many stratified folds; else the dataset's own val split; else a stratified
    `val_fraction` of them (or no validation when it is 0)."""
    train = dataset.split("train")
    if subset:
        train = train.take(np.arange(min(subset, len(train))))
    if folds:
        if not 0 <= fold < folds:
            raise DataError(f"data.fold must be in 0..{folds - 1} for {folds} folds, got {fold}.")
        rest, held_out = kfold(train.labels.numpy(), folds, seed)[fold]
        return train.take(rest), train.take(held_out)
    if "val" in dataset.splits:
        return train, dataset.split("val")
    if not val_fraction:
        return train, None
    parts = stratified_split(train.labels.numpy(), {"train": 1 - val_fraction, "val": val_fraction}, seed)
    return train.take(parts["train"]), train.take(parts["val"])

