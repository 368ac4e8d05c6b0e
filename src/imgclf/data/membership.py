"""Which image files a run trained, validated and was tested on, recorded in the run as data.json: each file's
path relative to the dataset folder, its class and a hash of its bytes. A run evaluated later, from another
directory or machine and with the data at another path, reads exactly these files, or says which are gone."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from tqdm import tqdm

from imgclf.data.cache import cached_json, files_key, split_key, stamp
from imgclf.data.core import FileSplit
from imgclf.errors import DataError

log = logging.getLogger(__name__)
FILE = "data.json"
_SHOWN = 5  # missing or changed files named in an error
_PROBE = 200  # recorded files looked for to tell whether a folder holds the run's data


def record(root: Path, classes: list[str], splits: dict[str, FileSplit | None]) -> dict:
    """The membership of each split: [path relative to `root`, class, content hash] per file, in split order."""
    base = os.path.abspath(root)
    entries = {}
    for name, split in splits.items():
        if split is not None:
            hashes = cached_json("sha256", split_key(split), lambda s=split: _hashes(s.paths))
            entries[name] = [[Path(os.path.relpath(os.path.abspath(p), base)).as_posix(), classes[label], digest]
                             for p, label, digest in zip(split.paths, split.labels.tolist(), hashes, strict=True)]
    return {"root": base, "classes": classes, "splits": entries}


def _hashes(paths: list[Path]) -> list[str]:
    """The first 128 bits of each file's SHA-256, in hex: enough to tell a changed file."""
    found = []
    for path in tqdm(paths, desc="hashing files", unit="file", disable=len(paths) < 2000, leave=False):
        with open(path, "rb") as f:
            found.append(hashlib.file_digest(f, "sha256").hexdigest()[:32])
    return found


def read(run: Path) -> dict | None:
    """The membership a run recorded, or None (a dataset by name, or a run from before data.json)."""
    path = run / FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise DataError(f"{path} is damaged ({err}); restore it from a copy of the run.") from err


def holds(recorded: dict, root: Path) -> bool:
    """Whether `root` is the recorded data (at another path, say): most of a sample of its files are there."""
    every = [entry[0] for entries in recorded["splits"].values() for entry in entries]
    probe = every[:: max(1, len(every) // _PROBE)]
    return sum((root / rel).is_file() for rel in probe) * 2 > len(probe)


def restore(recorded: dict, name: str, root: Path) -> FileSplit:
    """The recorded split `name` read from `root`; an error counts the files missing or changed since."""
    entries = recorded["splits"][name]
    paths = [root / rel for rel, _, _ in entries]
    present = [i for i, path in enumerate(paths) if path.is_file()]
    stamps = [stamp(paths[i]) for i in present]
    hashes = cached_json("sha256", files_key(stamps), lambda: _hashes([paths[i] for i in present]))
    missing = sorted(set(range(len(paths))) - set(present))
    changed = [i for i, now in zip(present, hashes, strict=True) if entries[i][2] != now]
    if missing or changed:
        named = [f"{entries[i][0]} ({'missing' if i in missing else 'changed'})" for i in (missing + changed)[:_SHOWN]]
        raise DataError(f"{len(missing)} of the {len(entries)} {name} images the run recorded are missing under "
                        f"{root} and {len(changed)} changed since training ({', '.join(named)}"
                        f"{' ...' if len(missing) + len(changed) > _SHOWN else ''}), so this is not the {name} split "
                        "the run was scored on. Restore the files, or point to where the data is now with "
                        "--data-dir PATH.")
    classes = recorded["classes"]
    labels = torch.tensor([classes.index(c) for _, c, _ in entries], dtype=torch.int64)
    return FileSplit(paths, labels, stamps)
