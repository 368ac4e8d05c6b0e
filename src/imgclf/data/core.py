"""The dataset value every command shares: class names plus splits held in memory or on disk."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgclf.data.cache import cached_json, split_key
from imgclf.data.transforms import GRAY_MODES, UNREADABLE, convert_channels, image_to_tensor
from imgclf.errors import DataError

log = logging.getLogger(__name__)
_ORIENTATION = 0x0112  # EXIF tag
_WARNED: set[str] = set()


@dataclass
class TensorSplit:
    """A split held in memory as one uint8 tensor: the fast path for MNIST-sized data."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def take(self, indices) -> TensorSplit:
        """The samples at `indices`, as a new split."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return TensorSplit(self.images[index], self.labels[index])


@dataclass
class FileSplit:
    """A split of image files decoded on demand (streamed through a DataLoader for training)."""

    paths: list[Path]
    labels: torch.Tensor  # (N,) int64
    stamps: list[str] | None = None  # each file's path, size and modification time when found (cache keys)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            with Image.open(self.paths[i]) as image:
                return image_to_tensor(image), int(self.labels[i])
        except UNREADABLE as err:
            raise DataError(f"cannot read image {self.paths[i]}: {err}. Remove or replace the file.") from err

    def take(self, indices) -> FileSplit:
        """The samples at `indices`, as a new split."""
        index = torch.as_tensor(indices, dtype=torch.long)
        picked = index.tolist()
        return FileSplit([self.paths[i] for i in picked], self.labels[index],
                         None if self.stamps is None else [self.stamps[i] for i in picked])


Split = TensorSplit | FileSplit


@dataclass
class Dataset:
    """Class names, named splits ('train', 'val', 'test') and what was found wrong on loading."""

    name: str
    classes: list[str]
    splits: dict[str, Split]
    kind: str = "photos"  # 'digits' or 'photos': picks the augmentation preset
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for problem in self.problems:
            message = f"{self.name}: {problem}"
            if message not in _WARNED:  # once per process, however often the dataset is loaded
                _WARNED.add(message)
                log.warning("%s", message)

    def split(self, name: str) -> Split:
        """The named split, or an error naming the splits there are."""
        if name not in self.splits:
            raise DataError(f"{self.name} has no {name!r} split; it has {', '.join(self.splits)}.")
        return self.splits[name]


def channel_stats(split: Split, channels: int, limit: int | None = None, seed: int = 0
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of pixel values in [0, 1], over all images or a seeded sample."""
    indices = np.arange(len(split))
    if limit is not None and len(split) > limit:
        indices = np.sort(np.random.default_rng(seed).choice(len(split), limit, replace=False))
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for chunk in np.array_split(indices, max(1, len(indices) // 4096)):
        for images in _images(split, chunk):  # (B, C, H, W) uint8
            x = convert_channels(images, channels).float() / 255  # float32 per chunk, float64 across chunks
            total += x.sum(dim=(0, 2, 3)).double()
            squares += (x * x).sum(dim=(0, 2, 3)).double()
            count += x[:, 0].numel()
    mean = total / count
    std = (squares / count - mean * mean).clamp(min=0).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def _images(split: Split, indices: np.ndarray):
    """Batches of uint8 images: one tensor for in-memory splits, one image at a time for files."""
    if isinstance(split, TensorSplit):
        yield split.images[torch.from_numpy(indices)]
    else:
        for i in indices:
            yield split[int(i)][0].unsqueeze(0)


def describe(dataset: Dataset, stats_limit: int = 2000) -> dict:
    """Counts per class and split, image shapes, and mean/std of the training split."""
    train = dataset.split("train")
    if isinstance(train, TensorSplit):
        found = _stats(train, stats_limit)
    else:  # thousands of files opened: done once for the same files
        found = cached_json("stats", split_key(train, stats_limit), lambda: _stats(train, stats_limit))
    shapes = Counter({tuple(shape): n for shape, n in found[0]})
    mean, std = tuple(found[1]), tuple(found[2])
    channels = max(c for c, _, _ in shapes)  # mixed gray and RGB: gray is repeated to RGB
    (_, height, width), _ = shapes.most_common(1)[0]
    splits = {}
    for name, split in dataset.splits.items():
        counts = np.bincount(split.labels.numpy(), minlength=len(dataset.classes))
        splits[name] = {"count": len(split), "per_class": dict(zip(dataset.classes, counts.tolist(), strict=True))}
    return {"name": dataset.name, "classes": dataset.classes, "splits": splits,
            "shapes": {f"{c}x{h}x{w}": n for (c, h, w), n in shapes.most_common()},
            "channels": channels, "size": (height, width), "mean": mean, "std": std, "problems": dataset.problems}


def _stats(split: Split, limit: int) -> tuple[list, tuple[float, ...], tuple[float, ...]]:
    """(shape, count) pairs and per-channel mean/std of a split's images (of a sample of `limit` for files)."""
    shapes = _shapes(split, limit)
    channels = max(c for c, _, _ in shapes)
    mean, std = channel_stats(split, channels, limit=None if isinstance(split, TensorSplit) else limit)
    return list(shapes.items()), mean, std


def _shapes(split: Split, limit: int, seed: int = 0) -> Counter:
    """How often each (C, H, W) occurs (as decoded: EXIF-rotated), from the headers of a seeded sample of files."""
    if isinstance(split, TensorSplit):
        return Counter({tuple(split.images.shape[1:]): len(split)})
    sample = np.random.default_rng(seed).permutation(len(split))[:limit]
    shapes: Counter = Counter()
    for i in sample:
        with Image.open(split.paths[i]) as image:
            height, width = image.height, image.width
            if image.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):  # rotated by 90 degrees when decoded
                height, width = width, height
            shapes[(1 if image.mode in GRAY_MODES else 3, height, width)] += 1
    return shapes
