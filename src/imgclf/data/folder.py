"""Any folder of images: `<root>/<class>/<image>`, or `<root>/{train,val,test}/<class>/<image>`."""

from __future__ import annotations

import logging
import os
import stat
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from imgclf.data.cache import cached_json, files_key
from imgclf.data.core import Dataset, FileSplit, Split, TensorSplit
from imgclf.data.splits import stratified_split
from imgclf.data.transforms import UNREADABLE, Preprocess
from imgclf.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
SPLIT_NAMES = ("train", "val", "test")
_SHOWN = 10  # bad files listed by name in one message
_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}  # suffixes of one format
_CHECK = 2  # raise when what the scan checks changes: cached verdicts of an older check are not reused


def load_folder(root: Path, fractions: dict[str, float] | None = None, seed: int = 0,
                strict: bool = False) -> Dataset:
    """A dataset of image files, checked: bad files, empty classes and split mismatches are reported."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder; "
                        "pass folder:PATH with PATH a folder of <class>/<image> subfolders.")
    problems: list[str] = []
    skipped: list[str] = []  # files left out, filled by _scan
    stamps: dict[str, str] = {}  # path -> stamp, filled by _scan
    present = [name for name in SPLIT_NAMES if (root / name).is_dir()]
    if present:
        if "train" not in present:
            raise DataError(f"{root} has {'/'.join(present)}/ but no train/ folder; add train/<class>/ "
                            "images, or use a single folder of <class>/ subfolders to have it split.")
        scans = {name: _scan(root / name, problems, skipped, strict, stamps) for name in present}
        classes = _classes(scans["train"], root / "train", problems)
        for name, scan in scans.items():
            unknown = sorted({c for c, paths in scan.items() if paths} - set(classes))
            if unknown:
                raise DataError(f"{root / name} has class(es) {', '.join(unknown)} that train/ does not "
                                "have; the class sets must match. Add them to train/ or remove them.")
        splits = {name: _flatten(scan, classes, stamps) for name, scan in scans.items()}
    else:
        scan = _scan(root, problems, skipped, strict, stamps)
        classes = _classes(scan, root, problems)
        every = _flatten(scan, classes, stamps)
        fractions_used = fractions or {"train": 0.8, "val": 0.1, "test": 0.1}
        parts = stratified_split(every.labels.numpy(), fractions_used, seed)
        splits = {name: every.take(idx) for name, idx in parts.items() if len(idx)}
        problems += [f"split {name!r} is empty: too few images for fraction {fractions_used[name]}; "
                     "add images or change the split fractions." for name, idx in parts.items()
                     if not len(idx) and fractions_used[name] > 0]
    for name, split in splits.items():
        missing = [c for c, n in zip(classes, np.bincount(split.labels.numpy(), minlength=len(classes)),
                                     strict=True) if n == 0]
        if missing:
            problems.append(f"split {name!r} has no images of class(es) {', '.join(missing)}, so its "
                            "metrics will not cover them; add images (or change the split fractions).")
    if strict and problems:
        raise DataError(f"{root} fails --strict ({len(skipped)} file(s) skipped): " + " ".join(problems))
    rare = _rare_formats([p for split in splits.values() for p in split.paths])  # a note, not a problem
    if rare:
        problems.append(f"{len(rare)} file(s) under {root} are kept but in a format the others are not "
                        f"({'; '.join(rare[:_SHOWN])}); check that they are real examples of their class.")
    return Dataset(f"folder:{root}", classes, splits, kind="photos", problems=problems)


def _scan(folder: Path, problems: list[str], skipped: list[str], decode: bool, stamps: dict[str, str]
          ) -> dict[str, list[Path]]:
    """Readable image files per class subfolder; unreadable and non-image files go to `problems` and (as
    <class>/<file>) to `skipped`, and every file's stamp (path, size, time) into `stamps`."""
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    listed = {d.name: _files(d) for d in class_dirs}
    files = {name: [path for path, _ in found] for name, found in listed.items()}
    stamps.update((os.fspath(path), mark) for found in listed.values() for path, mark in found)
    stray = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if stray:
        skipped += [f.name for f in stray]
        problems.append(f"{folder} has {len(stray)} image(s) outside class subfolders, left out "
                        f"({_names(stray)}); move them into a <class>/ folder.")
    verdicts = _verdicts([item for found in listed.values() for item in found], folder, decode)
    if verdicts:
        files = {name: [p for p in paths if os.path.abspath(p) not in verdicts] for name, paths in files.items()}
        problems.append(_skipped(verdicts, folder))
    skipped += [Path(os.path.relpath(path, os.path.abspath(folder))).as_posix() for path in verdicts]  # <class>/<file>
    return files


def _verdicts(found: list[tuple[Path, str]], folder: Path, decode: bool) -> dict[str, str]:
    """absolute path -> why it is no readable image, for the (path, stamp) files found under `folder`."""
    # the same files (paths, sizes, times) were checked before: skip opening every one of them again
    key = files_key([mark for _, mark in found], decode, _CHECK)
    return dict(cached_json("scan", key, lambda: _check([path for path, _ in found], folder, decode)))


def _skipped(verdicts: dict[str, str], folder: Path) -> str:
    """The problem line naming the files of `verdicts` (relative to `folder`) and why each was left out."""
    bad = [f"{Path(os.path.relpath(path, os.path.abspath(folder))).as_posix()} ({reason})"
           for path, reason in verdicts.items()]
    return (f"{len(bad)} file(s) under {folder} skipped: {'; '.join(bad[:_SHOWN])}"
            + (f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else "") + ". Remove or fix them.")


def load_unlabelled(root: Path, strict: bool = False) -> FileSplit:
    """Every readable image file under `root`, at any depth, for semi-supervised training: folder names are not
    labels (all labels are 0). Other files are left out with a warning (with `strict`, an error)."""
    if not root.is_dir():
        raise DataError(f"unlabelled image folder {root} does not exist or is not a folder; set data.unlabelled "
                        "to a folder of images (any layout), or leave it unset.")
    found = _files(root)
    verdicts = _verdicts(found, root, strict)
    if verdicts and strict:
        raise DataError(f"{root} fails --strict: {_skipped(verdicts, root)}")
    if verdicts:
        log.warning("%s", _skipped(verdicts, root))
    kept = [(path, mark) for path, mark in found if os.path.abspath(path) not in verdicts]
    if not kept:
        raise DataError(f"unlabelled image folder {root} has no readable images; put image files (.png, .jpg, "
                        "...) in it, at any depth, or leave data.unlabelled unset.")
    return FileSplit([path for path, _ in kept], torch.zeros(len(kept), dtype=torch.int64),
                     [mark for _, mark in kept])


def _rare_formats(paths: list[Path]) -> list[str]:
    """'class/name (GIF among 244 JPEG)' for files in a format that at most 1% of the others share: often a
    placeholder or a stray download rather than a photo of the class."""
    kinds = [_FORMATS.get(p.suffix.lower(), p.suffix.lower().lstrip(".").upper()) for p in paths]
    counts = Counter(kinds)
    if len(counts) < 2:
        return []
    common, n = counts.most_common(1)[0]
    return [f"{p.parent.name}/{p.name} ({kind} among {n} {common})" for p, kind in zip(paths, kinds, strict=True)
            if counts[kind] <= max(1, len(paths) // 100) and kind != common]


def _files(folder: Path) -> list[tuple[Path, str]]:
    """(path, stamp) of every file under `folder`, hidden ones left out, in path order; one
    stat each (os.walk, not Path.rglob: a large folder is listed several times faster)."""
    found = []
    for root, _, names in os.walk(folder):  # linked folders are not entered (nor were they by Path.rglob)
        parent, absolute = Path(root), os.path.abspath(root)
        for name in sorted(n for n in names if not n.startswith(".")):
            try:
                status = os.stat(os.path.join(root, name))
            except OSError:  # a dangling link
                continue
            if stat.S_ISREG(status.st_mode):
                found.append((parent / name, f"{absolute}{os.sep}{name}\0{status.st_size}\0{status.st_mtime_ns}"))
    return sorted(found, key=lambda item: item[0].parts)  # nested folders: as Path sorts (already sorted if flat)


def _check(paths: list[Path], folder: Path, decode: bool) -> list[tuple[str, str]]:
    """(absolute path, reason) of each file that is no image PIL can read (`decode`: fully decode every file;
    else check PNGs' structure and decode the others, whose headers say nothing of a truncated body)."""
    bad = []
    for path in tqdm(paths, desc=f"checking {folder.name}", unit="file", disable=len(paths) < 2000):
        reason = _unreadable(path, decode)
        if reason:
            bad.append((os.path.abspath(path), reason))
    return bad


def _unreadable(path: Path, decode: bool) -> str | None:
    """Why `path` is not a readable image, or None."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return "not an image file"
    try:
        with Image.open(path) as image:
            if decode or image.format != "PNG":  # a PNG's verify reads every chunk: cut files fail it
                image.draft(image.mode, (1, 1))  # JPEG: decode at 1/8 scale, still reading every byte
                image.load()
            else:
                image.verify()
    except UnidentifiedImageError:  # its message holds the path, said once already
        return "unreadable: not an image format PIL knows"
    except UNREADABLE as err:
        return f"unreadable: {err}"
    return None


def _classes(scan: dict[str, list[Path]], folder: Path, problems: list[str]) -> list[str]:
    """Class names with at least one image; empty ones are reported and left out."""
    empty = [name for name, paths in scan.items() if not paths]
    if empty:
        problems.append(f"class folder(s) {', '.join(empty)} in {folder} have no readable images "
                        "and are left out; add images or remove the folders.")
    classes = [name for name, paths in scan.items() if paths]
    if not classes:
        raise DataError(f"{folder} has no readable images in class subfolders; expected "
                        f"{folder}/<class>/<image>.png (or .jpg, ...).")
    return classes


def _flatten(scan: dict[str, list[Path]], classes: list[str], stamps: dict[str, str]) -> FileSplit:
    """All files in class order, with their label indices and stamps."""
    paths = [p for c in classes for p in scan.get(c, [])]
    labels = torch.tensor([i for i, c in enumerate(classes) for _ in scan.get(c, [])], dtype=torch.int64)
    return FileSplit(paths, labels, [stamps[os.fspath(p)] for p in paths])


def _names(paths: list[Path]) -> str:
    return ", ".join(p.name for p in paths[:_SHOWN]) + (" ..." if len(paths) > _SHOWN else "")


def with_extra(split: Split, classes: list[str], folder: Path) -> Split:
    """`split` plus every image of a <class>/ folder (e.g. corrections from imgclf feedback export), labelled in
    the order of `classes`; in memory, the extra images are resized to the split's own image shape."""
    dataset = load_folder(folder, {"train": 1.0})
    extra, names = dataset.split("train"), dataset.classes
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise DataError(f"{folder} has images of {', '.join(unknown)}, which are not classes of this dataset "
                        f"({', '.join(classes)}); remove those folders.")
    labels = torch.tensor([classes.index(names[i]) for i in extra.labels.tolist()], dtype=torch.long)
    if isinstance(split, FileSplit):
        both = None if split.stamps is None or extra.stamps is None else split.stamps + extra.stamps
        return FileSplit(split.paths + extra.paths, torch.cat([split.labels, labels]), both)
    shape = Preprocess(size=tuple(split.images.shape[-2:]), channels=split.images.shape[1],
                       mean=(0.0,) * split.images.shape[1], std=(1.0,) * split.images.shape[1])
    images = torch.stack([shape.prepare(extra[i][0]) for i in range(len(extra))])
    return TensorSplit(torch.cat([split.images, images]), torch.cat([split.labels, labels]))
