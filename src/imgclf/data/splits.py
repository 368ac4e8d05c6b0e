"""Seeded, stratified splits: fixed fractions per class, and k folds for cross-validation."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold

from imgclf.errors import DataError


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int = 0) -> dict[str, np.ndarray]:
    """Indices per named part, each class cut in the given proportions (rounded per class)."""
    if not fractions or min(fractions.values()) < 0 or sum(fractions.values()) <= 0:
        raise DataError(f"split fractions must be non-negative and not all zero, got {fractions}.")
    total = sum(fractions.values())
    cuts = np.cumsum([f / total for f in fractions.values()])
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in fractions}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        bounds = np.concatenate([[0], np.round(cuts * len(members)).astype(int)])
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
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(folds.split(np.zeros(len(labels)), labels))
