"""Datasets by name: find the files locally, else download them verified, then read them into memory."""

from __future__ import annotations

import logging
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgclf.data.cache import cache_dir
from imgclf.data.core import Dataset, TensorSplit
from imgclf.data.download import download
from imgclf.data.idx import read_idx
from imgclf.data.splits import stratified_split
from imgclf.errors import DataError

log = logging.getLogger(__name__)

IDX_FILES = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
             "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}


@dataclass(frozen=True)
class DatasetSpec:
    """Where a named dataset's files come from and how to read them."""

    name: str
    classes: tuple[str, ...]
    kind: str  # 'digits' or 'photos'
    files: dict[str, tuple[str, str]]  # role -> (file name, md5 published by the mirrors)
    mirrors: tuple[str, ...]  # base URLs, tried in order
    reader: Callable[[dict[str, Path], int], dict[str, TensorSplit]]  # (role -> path, n classes) -> splits


def read_idx_splits(paths: dict[str, Path], num_classes: int) -> dict[str, TensorSplit]:
    """MNIST-family train/test splits from four IDX files, cross-checked."""
    splits = {}
    for split in ("train", "test"):
        images = read_idx(paths[f"{split}_images"], ndim=3)
        labels = read_idx(paths[f"{split}_labels"], ndim=1)
        _check_labels(labels, len(images), num_classes, paths[f"{split}_labels"])
        splits[split] = TensorSplit(torch.from_numpy(images.copy()).unsqueeze(1),  # (N, 1, 28, 28)
                                    torch.from_numpy(labels.astype(np.int64)))
    return splits


def read_cifar_binary(paths: dict[str, Path], num_classes: int) -> dict[str, TensorSplit]:
    """CIFAR-10 from its binary archive (records of 1 label byte + 3x32x32 pixels; no pickle)."""
    members = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
    archive = paths["archive"]
    try:
        with tarfile.open(archive, "r:*") as tar:  # gzipped or not
            raw = {split: b"".join(tar.extractfile(f"cifar-10-batches-bin/{m}").read() for m in names)
                   for split, names in members.items()}
    except (tarfile.TarError, EOFError, KeyError, AttributeError, OSError) as err:
        raise DataError(f"{archive} is not a complete CIFAR-10 binary archive ({err}). "
                        "Delete it and download it again.") from err
    splits = {}
    for split, data in raw.items():
        if len(data) % 3073:
            raise DataError(f"{archive}: the {split} records are truncated ({len(data)} bytes is not a "
                            "multiple of 3073). Delete it and download it again.")
        records = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3073)
        _check_labels(records[:, 0], len(records), num_classes, archive)
        splits[split] = TensorSplit(torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy()),
                                    torch.from_numpy(records[:, 0].astype(np.int64)))
    return splits


def _check_labels(labels: np.ndarray, count: int, num_classes: int, path: Path) -> None:
    if len(labels) != count:
        raise DataError(f"{path} has {len(labels):,} labels for {count:,} images; the image and label "
                        "files do not belong together. Download both again.")
    if len(labels) and labels.max() >= num_classes:
        raise DataError(f"{path} has label {labels.max()}, out of range for {num_classes} classes. "
                        "The file is corrupt or from another dataset.")


def _idx_spec(name: str, classes: tuple[str, ...], md5s: tuple[str, str, str, str],
              mirrors: tuple[str, ...], kind: str = "digits") -> DatasetSpec:
    files = {role: (filename, md5) for (role, filename), md5 in zip(IDX_FILES.items(), md5s, strict=True)}
    return DatasetSpec(name, classes, kind, files, mirrors, read_idx_splits)


DIGITS = tuple(str(d) for d in range(10))
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    _idx_spec("mnist", DIGITS,
              ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
               "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
              ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")),
    _idx_spec("fashion-mnist",
              ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
              ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
               "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
              ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",), kind="photos"),
    _idx_spec("kmnist", ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
              ("bdb82020997e1d708af4cf47b453dcf7", "e144d726b3acfaa3e44228e80efcd344",
               "5c965bf0a639b31b8f53240b1b52f4d7", "7320c461ea6c1c855c0b718fb2a4b134"),
              ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",)),
    DatasetSpec("cifar10", ("airplane", "automobile", "bird", "cat", "deer",
                            "dog", "frog", "horse", "ship", "truck"), "photos",
                {"archive": ("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")},
                ("https://www.cs.toronto.edu/~kriz/",), read_cifar_binary),
)}
NAMES = (*DATASETS, "digits")


def search_dirs(name: str, data_dir: Path | None) -> list[Path]:
    """Folders searched in order: the data dir (and its <name>/ subfolder), then the cache."""
    if data_dir is None and os.environ.get("IMGCLF_DATA_DIR"):
        data_dir = Path(os.environ["IMGCLF_DATA_DIR"])
    dirs = []
    if data_dir is not None:
        if not data_dir.is_dir():
            raise DataError(f"data dir {data_dir} does not exist; pass an existing folder with --data-dir "
                            "(or IMGCLF_DATA_DIR), or leave it out to use the cache and download.")
        dirs += [data_dir, data_dir / name]
    return [*dirs, cache_dir() / name]


def resolve_files(spec: DatasetSpec, data_dir: Path | None = None, allow_download: bool = True) -> dict[str, Path]:
    """Path of every file the dataset needs: found locally (gzipped or not), else downloaded into the cache."""
    dirs = search_dirs(spec.name, data_dir)
    paths: dict[str, Path | None] = {}
    for role, (filename, _) in spec.files.items():
        names = [filename, filename.removesuffix(".gz")]
        paths[role] = next((d / n for d in dirs for n in names if (d / n).is_file()), None)
    failures = ["downloads were turned off"]
    for role in [r for r, p in paths.items() if p is None and allow_download]:
        paths[role], failures = _download_any(spec, *spec.files[role])
        if paths[role] is None:  # every mirror failed: most likely offline, so stop trying
            break
    missing = [spec.files[role][0] for role, path in paths.items() if path is None]
    if missing:
        raise DataError(f"{spec.name}: cannot find {', '.join(missing)} (gzipped or not) in "
                        f"{', '.join(map(str, dirs))}, and could not download them ({'; '.join(failures)}). "
                        f"Put the files in {dirs[-1]} or pass --data-dir FOLDER (or set IMGCLF_DATA_DIR) "
                        "to a folder that has them.")
    return paths


def _download_any(spec: DatasetSpec, filename: str, md5: str) -> tuple[Path | None, list[str]]:
    """Try each mirror in turn; the path on success, and the errors met."""
    errors = []
    for mirror in spec.mirrors:
        try:
            return download(mirror + filename, cache_dir() / spec.name / filename, md5), errors
        except DataError as err:
            log.debug("%s", err)
            errors.append(str(err))
    return None, errors


def load_named(name: str, data_dir: Path | None = None, allow_download: bool = True) -> Dataset:
    """A named dataset with its train and test splits in memory."""
    if name == "digits":
        return load_digits()
    spec = DATASETS[name]
    splits = spec.reader(resolve_files(spec, data_dir, allow_download), len(spec.classes))
    return Dataset(name, list(spec.classes), splits, kind=spec.kind)


def load_digits(seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), split 80/20 stratified."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.from_numpy(np.round(bunch.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)  # (N, 1, 8, 8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    parts = stratified_split(bunch.target, {"train": 0.8, "test": 0.2}, seed)
    splits = {name: TensorSplit(images[idx], labels[idx]) for name, idx in parts.items()}
    return Dataset("digits", list(DIGITS), splits, kind="digits")
