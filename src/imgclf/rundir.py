"""The run directory's model files: model.safetensors + model.json, written atomically, read back safely.

Kept apart from training so that evaluation, export and serving can load a model without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import re
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from imgclf import __version__
from imgclf.data.transforms import Preprocess
from imgclf.errors import ImgclfError, first_line
from imgclf.files import atomic_write
from imgclf.models import Classifier, create_model

log = logging.getLogger(__name__)
FORMAT = 1
SEAL = "meta_sha256"  # model.json's own checksum: the sha256 of the canonical JSON of its other keys
MAX_CLASSES = 100_000  # caps on what a model's metadata may ask for (ImageNet-21k has 21,841 classes)
MAX_SIDE = 4096  # input pixels per side (the models here take 28 to 512)
MAX_META_BYTES = 32 * 2**20
_unsealed: set[Path] = set()  # files already warned about


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
    write_meta(folder / "model.json", meta)


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
    meta = read_meta(meta_path, "retrain or restore it from a backup")
    if sha256(weights_path) != meta["sha256"]:
        raise ImgclfError(f"{weights_path} does not match the checksum in model.json: the file is damaged "
                          "or was replaced. Restore it, or retrain.")
    arch = dict(meta["architecture"])
    name = arch.pop("name")
    model = create_model(name, **arch)
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError) as err:
        raise ImgclfError(f"{weights_path} is not a safetensors file ({first_line(err)}); restore it, or "
                          "retrain.") from err
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ImgclfError(f"{weights_path} does not fit {name}: {first_line(err)}") from err
    return model.eval(), meta


def update_meta(folder: Path, **changes) -> dict:
    """Add or replace keys of model.json (atomically, sealed again); the weights and their checksum stay as they are."""
    meta = read_meta(folder / "model.json", "retrain or restore it from a backup")
    return write_meta(folder / "model.json", {**meta, **changes})


def meta_digest(meta: dict) -> str:
    """The seal of a model's metadata: the sha256 of its canonical JSON (sorted keys, no spaces) without the seal."""
    rest = {key: value for key, value in meta.items() if key != SEAL}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_meta(path: Path, meta: dict) -> dict:
    """Write a model's metadata (model.json or an export's JSON) sealed with its meta_sha256, atomically; returns
    it as a reader gets it."""
    plain = json.loads(json.dumps({key: value for key, value in meta.items() if key != SEAL}))  # tuples as lists
    text = json.dumps({**plain, SEAL: meta_digest(plain)}, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return json.loads(text)


def read_meta(path: Path, remedy: str, exported: bool = False) -> dict:
    """A model's metadata, checked against its seal and validated (meta_problem); one clear error naming the file
    and `remedy` (what to do) when it is damaged. Files from before the seal load with a warning."""
    try:
        if path.stat().st_size > MAX_META_BYTES:
            raise ValueError(f"{path.stat().st_size:,} bytes, more than metadata ever takes")
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # not UTF-8, not JSON, nested beyond reason
        raise ImgclfError(f"{path} is damaged ({first_line(err)}); {remedy}.") from err
    problem = meta_problem(meta, exported)
    if problem:
        raise ImgclfError(f"{path} is damaged: {problem}; {remedy}.")
    if SEAL not in meta and path not in _unsealed:
        _unsealed.add(path)
        log.warning("%s has no %s (it was written before imgclf sealed model metadata), so changes to it cannot "
                    "be noticed; retrain or export again to add one (evaluate --calibrate adds it to a run).",
                    path, SEAL)
    elif SEAL in meta and meta[SEAL] != meta_digest(meta):
        raise ImgclfError(f"{path} was changed after imgclf wrote it (its {SEAL} does not match its contents), so "
                          f"its classes or preprocessing cannot be trusted; {remedy}.")
    return meta


def meta_problem(meta: object, exported: bool) -> str | None:
    """What is wrong with a model's metadata, or None: the keys every loader reads, of their types, within caps."""
    if not isinstance(meta, dict):
        return "it is not a JSON object"
    missing = [key for key in ("classes", "preprocess", "sha256", *(() if exported else ("architecture",)))
               if key not in meta]
    if missing:
        return f"it lacks {', '.join(missing)}"
    classes, pre, arch = meta["classes"], meta["preprocess"], meta.get("architecture", {})
    if not (isinstance(classes, list) and 1 <= len(classes) <= MAX_CLASSES and all(isinstance(c, str) for c in classes)
            and len(set(classes)) == len(classes)):
        return f"classes must be a list of 1 to {MAX_CLASSES:,} different names"
    if not (isinstance(pre, dict) and isinstance(pre.get("size"), list) and len(pre["size"]) == 2
            and all(_whole(side, 1, MAX_SIDE) for side in pre["size"])):
        return f"preprocess.size must be two whole numbers from 1 to {MAX_SIDE} (height, width)"
    if pre.get("channels") not in (1, 3) or isinstance(pre["channels"], bool):
        return "preprocess.channels must be 1 or 3"
    if not all(isinstance(pre.get(key), list) and len(pre[key]) == pre["channels"] and all(map(_finite, pre[key]))
               for key in ("mean", "std")) or min(pre["std"]) <= 0:
        return (f"preprocess.mean and preprocess.std must be lists of one finite number per channel "
                f"({pre['channels']}), std above 0")
    if not (isinstance(meta["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", meta["sha256"])):
        return "sha256 must be 64 hexadecimal digits"
    if not (_finite(meta.get("temperature", 1.0)) and meta.get("temperature", 1.0) > 0):
        return "temperature must be a positive number"
    if not (isinstance(arch, dict) and isinstance(arch.get("name", ""), str)
            and arch.get("num_classes", len(classes)) == len(classes)
            and _whole(arch.get("image_size", 1), 1, MAX_SIDE) and arch.get("in_channels", 1) in (1, 3)
            and not {"pretrained", "weights", "freeze"} & arch.keys() and (exported or "name" in arch)):
        return (f"architecture must name the model, with num_classes {len(classes)} (one per class), image_size "
                f"up to {MAX_SIDE}, in_channels 1 or 3, and no pretrained, weights or freeze")
    return None


def _whole(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def preprocess_of(meta: dict) -> Preprocess:
    """The preprocessing saved with a model."""
    return Preprocess.from_dict(meta["preprocess"])
