"""Batches for training and evaluation: in-memory splits are sliced on the device; file splits stream."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from imgclf.data.core import FileSplit, Split, TensorSplit
from imgclf.data.transforms import Augment, Preprocess


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
    """Decode and prepare every image once (in DataLoader workers) into one uint8 tensor: later epochs
    then run as fast as for MNIST. The images are exactly those `batches` would stream."""
    loader = DataLoader(_Prepared(split, preprocess), batch_size=256, num_workers=num_workers)
    images = torch.cat([x for x, _ in loader]) if len(split) else torch.zeros(0, preprocess.channels, *preprocess.size,
                                                                              dtype=torch.uint8)
    return TensorSplit(images, split.labels.clone())


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
