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


def batches(split: Split, preprocess: Preprocess, batch_size: int, *, augment: Augment | None = None,
            shuffle: bool = False, generator: torch.Generator | None = None, device: str | torch.device = "cpu",
            num_workers: int = 0, drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Model-ready (B, C, H, W) float images and (B,) labels; augmentation and normalization per batch."""
    if isinstance(split, TensorSplit):
        raw = _tensor_batches(split, preprocess, batch_size, shuffle, generator, device, drop_last)
    else:
        loader = DataLoader(_Prepared(split, preprocess), batch_size=batch_size, shuffle=shuffle,
                            generator=generator, num_workers=num_workers, drop_last=drop_last,
                            pin_memory=torch.device(device).type == "cuda")
        raw = ((x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in loader)
    for images, labels in raw:  # images: (B, C, H, W) uint8 at the model's size
        x = images.float() / 255
        if augment is not None:
            x = augment(x, generator)
        yield preprocess.normalize(x), labels


def _tensor_batches(split: TensorSplit, preprocess: Preprocess, batch_size: int, shuffle: bool,
                    generator: torch.Generator | None, device, drop_last: bool):
    """Slices of the whole split, moved to the device once as uint8."""
    images, labels = split.images.to(device), split.labels.to(device)
    n = len(labels)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size].to(device)
        yield preprocess.prepare(images[index]), labels[index]
