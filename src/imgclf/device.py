"""Which torch device to run on, shared by training, evaluation and serving."""

from __future__ import annotations

import torch

from imgclf.errors import ImgclfError


def pick_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; a named device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(name.split(":")[0], False):
        raise ImgclfError(f"device {name!r} is not available here; use auto or cpu.")
    return torch.device(name)
