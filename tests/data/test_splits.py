import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgclf.data import kfold, stratified_split
from imgclf.errors import DataError


@settings(max_examples=50, deadline=None)
@given(counts=st.lists(st.integers(1, 40), min_size=1, max_size=6), seed=st.integers(0, 1000),
       fractions=st.sampled_from([(0.8, 0.1, 0.1), (0.5, 0.5, 0.0), (0.7, 0.3, 0.0), (1, 1, 1)]))
def test_split_is_a_stratified_partition(counts, seed, fractions):
    labels = np.repeat(np.arange(len(counts)), counts)
    parts = stratified_split(labels, dict(zip(("train", "val", "test"), fractions, strict=True)), seed)
    joined = np.concatenate(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(len(labels)))  # every index exactly once
    total = sum(fractions)
    for name, f in zip(("train", "val", "test"), fractions, strict=True):
        per_class = np.bincount(labels[parts[name]], minlength=len(counts))
        assert np.all(np.abs(per_class - np.asarray(counts) * f / total) <= 1)  # rounded per class
    assert all(np.array_equal(parts[k], v) for k, v in stratified_split(
        labels, dict(zip(("train", "val", "test"), fractions, strict=True)), seed).items())


def test_bad_fractions():
    with pytest.raises(DataError, match="split fractions must be non-negative"):
        stratified_split(np.zeros(4, int), {"train": -1, "test": 2})


def test_kfold_validates_each_sample_once_balanced(mnist):
    labels = mnist.split("test").labels.numpy()[:1000]
    folds = kfold(labels, 5, seed=0)
    validated = np.concatenate([val for _, val in folds])
    assert sorted(validated.tolist()) == list(range(1000))
    for train, val in folds:
        assert set(train).isdisjoint(val)
        ratio = np.bincount(labels[val], minlength=10) / np.bincount(labels, minlength=10)
        assert np.all(np.abs(ratio - 0.2) < 0.03)


def test_kfold_errors():
    with pytest.raises(DataError, match=r"class 1 has only 2 samples, fewer than k=3 folds; use k <= 2"):
        kfold(np.array([0, 0, 0, 1, 1]), 3)
    with pytest.raises(DataError, match="k >= 2"):
        kfold(np.array([0, 1]), 1)
