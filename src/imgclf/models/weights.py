"""Reading weight files safely: safetensors, or a state dict through torch.load(weights_only=True)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from imgclf.errors import ImgclfError, first_line


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors by name from a .safetensors file or a torch state dict; code-carrying pickles are refused."""
    path = Path(path)
    if not path.is_file():
        raise ImgclfError(f"weights file {path} does not exist; pass the path of a .safetensors or .pth file.")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except Exception as err:  # safetensors raises its own error types for bad headers
            raise ImgclfError(f"{path} is not a valid safetensors file ({err}).") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ImgclfError(f"refusing to load {path}: it is not a plain tensor file and loading it could run "
                          f"code ({first_line(err)}). Convert it to .safetensors where you trust it.") from err
    if isinstance(state, dict):  # a training checkpoint: {"state_dict": ..., "epoch": ...} (or "model": ...)
        state = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), dict)), state)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ImgclfError(f"{path} holds no state dict (a mapping of names to tensors).")
    return state


def backbone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's tensors under torchvision's names: without DataParallel's 'module.' prefix, and from an
    imgclf run's model.safetensors ('body.' and 'head.' keys) only the body."""
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("body.") for k in state) and all(k.startswith(("body.", "head.")) for k in state):
        state = {k.removeprefix("body."): v for k, v in state.items() if k.startswith("body.")}
    return state


def load_matching(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path,
                  replaceable: tuple[str, ...] = (),
                  hint: str = "Check that the file is for the same architecture.") -> None:
    """Load every tensor into `module`, strictly, except under `replaceable` (a classifier head that will be
    replaced anyway), which may be missing or differ in shape. Mismatches are listed in the error."""
    own = module.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(replaceable))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in set(own) & set(state)
                   if state[k].shape != own[k].shape and not k.startswith(replaceable))
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(keys[:8])}{f' ... ({len(keys)} in all)' if len(keys) > 8 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise ImgclfError(f"weights in {source} do not fit this model ({'; '.join(parts)}). {hint}")
    module.load_state_dict({k: v for k, v in state.items() if v.shape == own[k].shape}, strict=False)
