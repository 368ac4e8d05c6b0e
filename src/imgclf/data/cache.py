"""Work on image files done once: what a folder scan found, image statistics and decoded images, on disk.

Entries are keyed by the files' paths, sizes and modification times (plus what was computed from them), so a
changed, added or removed file misses the cache. Decoded images carry a checksum: a damaged entry is rebuilt
with a warning, never trusted. The cache lives in `cache_dir()/folders` and may be deleted at any time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from imgclf.files import atomic_write

log = logging.getLogger(__name__)
_FORMAT = 1  # raise when what is cached, or how images are decoded, changes


def cache_dir() -> Path:
    """Where downloads and the folder cache go: $IMGCLF_CACHE_DIR, else $XDG_CACHE_HOME/imgclf, else
    ~/.cache/imgclf."""
    if os.environ.get("IMGCLF_CACHE_DIR"):
        return Path(os.environ["IMGCLF_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgclf"


def stamp(path: Path) -> str:
    """A file's absolute path, size and modification time: what tells that it is the same file."""
    status = os.stat(path)
    return f"{os.path.abspath(path)}\0{status.st_size}\0{status.st_mtime_ns}"


def files_key(stamps: Sequence[str], *extra: object) -> str:
    """A digest of the files' stamps and of `extra`."""
    digest = hashlib.sha256(repr((_FORMAT, *extra)).encode())
    digest.update("\n".join(stamps).encode())
    return digest.hexdigest()


def split_key(split, *extra: object) -> str:
    """files_key of a FileSplit: from the stamps taken when its folder was scanned, else from its files now."""
    return files_key(split.stamps if split.stamps is not None else [stamp(p) for p in split.paths], *extra)


def _entry(kind: str, key: str, suffix: str) -> Path:
    return cache_dir() / "folders" / kind / f"{key}{suffix}"


def _store(path: Path, write: Callable[[Path], None]) -> None:
    """Write a cache entry; a cache that cannot be written (read-only, disk full) costs speed, nothing else."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except OSError as err:
        log.warning("could not write the cache entry %s (%s); the work will be done again next time", path,
                    err.strerror or err)


def cached_json(kind: str, key: str, compute: Callable[[], object]) -> object:
    """compute(), or its JSON-able result stored under (kind, key) by an earlier call."""
    path = _entry(kind, key, ".json")
    try:
        return json.loads(path.read_text())["value"]
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("cache entry %s is damaged (%s); computing it again", path, err)
    value = compute()
    _store(path, lambda tmp: tmp.write_text(json.dumps({"value": value})))
    return value


def cached_images(key: str, count: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """compute() (a uint8 (N, C, H, W) tensor of `count` images), or the checked copy stored by an earlier call."""
    path = _entry("decoded", key, ".safetensors")
    if path.is_file():
        try:
            return _load_images(path, count)
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            log.warning("decoded-image cache %s is damaged (%s); decoding the images again", path, err)
    images = compute()
    digest = hashlib.sha256(images.numpy().data).hexdigest()  # the pixels as they lie in memory, not a copy
    _store(path, lambda tmp: save_file({"images": images}, str(tmp), metadata={"sha256": digest}))
    return images


def _load_images(path: Path, count: int) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as f:
        digest = (f.metadata() or {}).get("sha256")
        images = f.get_tensor("images")
    if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != count:
        raise ValueError(f"holds {tuple(images.shape)} {images.dtype}, not {count} uint8 images")
    if hashlib.sha256(images.numpy().data).hexdigest() != digest:
        raise ValueError("its checksum does not match its pixels")
    log.info("read %d decoded images from the cache (%s)", count, path.parent)
    return images
