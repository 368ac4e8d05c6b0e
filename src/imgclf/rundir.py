"""The run directory's model files: model.safetensors + model.json, written atomically, read back safely.

Kept apart from training so that evaluation, export and serving can load a model without it.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from imgclf import __version__
from imgclf.data.transforms import Preprocess
from imgclf.errors import ImgclfError, first_line
from imgclf.files import atomic_write
from imgclf.models import Classifier, create_model

FORMAT = 1


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(folder: Path, model: Classifier, classes: list[str], preprocess: Preprocess,
               state: dict[str, torch.Tensor] | None = None, **info) -> None:
    """Write model.safetensors (the given state, default the model's) and model.json describing it."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in (state or model.state_dict()).items()}
    if not all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()):
        raise ImgclfError("refusing to save weights that contain NaN or infinity.")
    atomic_write(folder / "model.safetensors", lambda tmp: save_file(tensors, tmp))
    meta = {"format": FORMAT, "architecture": model.config, "classes": classes,
            "preprocess": preprocess.to_dict(), "target_layer": model.target_layer,
            "sha256": sha256(folder / "model.safetensors"), "saved": datetime.now(timezone.utc).isoformat(),
            "versions": {"imgclf": __version__, "torch": torch.__version__,
                         "torchvision": version("torchvision"), "python": platform.python_version()},
            **info}
    atomic_write(folder / "model.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))


def run_folder(path: str | Path) -> Path:
    """The run directory of a path that names it or a file in it (model.json, model.safetensors)."""
    path = Path(path)
    if not path.exists():  # named as given: its parent folder is not what the user meant
        raise ImgclfError(f"{path} does not exist; pass a run directory (the folder `imgclf train` printed) "
                          "or a model file in one.")
    return path if path.is_dir() else path.parent


def load_model(path: str | Path) -> tuple[Classifier, dict]:
    """The model from a run directory (or its model.json / model.safetensors), in eval mode, and its metadata."""
    folder = run_folder(path)
    meta_path, weights_path = folder / "model.json", folder / "model.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise ImgclfError(f"{folder} is not a run directory with a trained model (model.json and "
                          "model.safetensors); pass the folder `imgclf train` printed.")
    try:
        meta = json.loads(meta_path.read_text())
        arch = dict(meta["architecture"])
        name = arch.pop("name")
    except (ValueError, KeyError, TypeError) as err:
        raise ImgclfError(f"{meta_path} is damaged ({err}); retrain or restore it from a backup.") from err
    if sha256(weights_path) != meta.get("sha256"):
        raise ImgclfError(f"{weights_path} does not match the checksum in model.json: the file is damaged "
                          "or was replaced. Restore it, or retrain.")
    model = create_model(name, **arch)
    try:
        model.load_state_dict(load_file(weights_path))
    except (RuntimeError, OSError) as err:
        raise ImgclfError(f"{weights_path} does not fit {name}: {first_line(err)}") from err
    return model.eval(), meta


def update_meta(folder: Path, **changes) -> dict:
    """Add or replace keys of model.json (atomically); the weights and their checksum stay as they are."""
    meta = json.loads((folder / "model.json").read_text())
    meta.update(changes)
    atomic_write(folder / "model.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
    return meta


def preprocess_of(meta: dict) -> Preprocess:
    """The preprocessing saved with a model."""
    return Preprocess.from_dict(meta["preprocess"])
