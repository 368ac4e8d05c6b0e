"""Batches for training and evaluation: in-memory splits are sliced on the device; file splits stream."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from imgclf.data.cache import cached_images, split_key
from imgclf.data.core import FileSplit, Split, TensorSplit
from imgclf.data.transforms import Augment, Preprocess

log = logging.getLogger(__name__)


class _Prepared(torch.utils.data.Dataset):
    """A file split whose images come out decoded and prepared to one size (in DataLoader workers)."""

    def __init__(self, split: FileSplit, preprocess: Preprocess) -> None:
        self.split, self.preprocess = split, preprocess

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.split[i]
        return self.preprocess.prepare(image), label


def to_memory(split: FileSplit, preprocess: Preprocess, num_workers: int = 0) -> TensorSplit:
    """Every image decoded and prepared once into one uint8 tensor (in DataLoader workers), so later epochs
    run as fast as for MNIST; kept in the cache, so later runs skip decoding. The images are exactly those
    `batches` would stream."""
    def decode() -> torch.Tensor:
        log.info("decoding %d images", len(split))
        loader = DataLoader(_Prepared(split, preprocess), batch_size=256, num_workers=num_workers)
        if not len(split):
            return torch.zeros(0, preprocess.channels, *preprocess.size, dtype=torch.uint8)
        return torch.cat([x for x, _ in tqdm(loader, desc="decoding", unit="batch", leave=False,
                                             disable=len(split) < 5000)])

    key = split_key(split, preprocess.size, preprocess.channels)
    return TensorSplit(cached_images(key, len(split), decode), split.labels.clone())


def in_memory(split: Split, preprocess: Preprocess, choice: bool | None = None, limit_gb: float = 2.0,
              num_workers: int = 0) -> Split:
    """A file split decoded into memory when `choice` says so (None: when the prepared images take at most
    `limit_gb`); other splits as they are."""
    if not isinstance(split, FileSplit) or choice is False:
        return split
    size = len(split) * preprocess.channels * preprocess.size[0] * preprocess.size[1]
    if choice is None and size > limit_gb * 2**30:
        log.info("streaming %d images from disk (%.1f GiB prepared > data.memory_limit_gb)", len(split),
                 size / 2**30)
        return split
    return to_memory(split, preprocess, num_workers)


def batches(split: Split, preprocess: Preprocess, batch_size: int, *, order: torch.Tensor | None = None,
            augment: Augment | None = None, generator: torch.Generator | None = None,
            device: str | torch.device = "cpu", num_workers: int = 0, drop_last: bool = False
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Model-ready (B, C, H, W) float images and (B,) labels, visiting `order` (default: all, in turn).

    Augmentation (drawing from `generator`) and normalization run per batch on the device. Passing
    the order lets a caller shuffle with its own generator, or resume part-way through an epoch."""
    order = torch.arange(len(split)) if order is None else order
    if drop_last:
        order = order[: len(order) - len(order) % batch_size]
    if isinstance(split, TensorSplit):
        all_images, all_labels = split.images.to(device), split.labels.to(device)  # uint8, on the device once
        raw = ((preprocess.prepare(all_images[i]), all_labels[i]) for i in order.to(device).split(batch_size))
    else:
        loader = DataLoader(_Prepared(split, preprocess), batch_size=batch_size, sampler=order.tolist(),
                            num_workers=num_workers, pin_memory=torch.device(device).type == "cuda")
        raw = ((x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in loader)
    for images, labels in raw:  # images: (B, C, H, W) uint8 at the model's size
        x = images.float() / 255
        if augment is not None:
            x = augment(x, generator)
        yield preprocess.normalize(x), labels


def images_at(split: Split, preprocess: Preprocess, indices: torch.Tensor, device: str | torch.device = "cpu"
              ) -> torch.Tensor:
    """(B, C, H, W) float images in [0, 1] at the model's size, of the samples at `indices` (labels ignored): a
    batch drawn at random, as semi-supervised training draws its unlabelled images."""
    if isinstance(split, TensorSplit):
        images = split.images[indices.to(split.images.device)]
    else:  # decoded here: a few hundred files a step, too few to be worth DataLoader workers
        images = torch.stack([preprocess.prepare(split[i][0]) for i in indices.tolist()])
    return preprocess.prepare(images.to(device)).float() / 255
