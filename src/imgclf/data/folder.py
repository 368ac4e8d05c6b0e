"""Any folder of images: `<root>/<class>/<image>`, or `<root>/{train,val,test}/<class>/<image>`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from imgclf.data.core import Dataset, FileSplit, Split, TensorSplit
from imgclf.data.splits import stratified_split
from imgclf.data.transforms import UNREADABLE, Preprocess
from imgclf.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
SPLIT_NAMES = ("train", "val", "test")
_SHOWN = 10  # bad files listed by name in one message


def load_folder(root: Path, fractions: dict[str, float] | None = None, seed: int = 0,
                strict: bool = False) -> Dataset:
    """A dataset of image files, checked: bad files, empty classes and split mismatches are reported."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder; "
                        "pass folder:PATH with PATH a folder of <class>/<image> subfolders.")
    problems: list[str] = []
    present = [name for name in SPLIT_NAMES if (root / name).is_dir()]
    if present:
        if "train" not in present:
            raise DataError(f"{root} has {'/'.join(present)}/ but no train/ folder; add train/<class>/ "
                            "images, or use a single folder of <class>/ subfolders to have it split.")
        scans = {name: _scan(root / name, problems, strict) for name in present}
        classes = _classes(scans["train"], root / "train", problems)
        for name, scan in scans.items():
            unknown = sorted({c for c, paths in scan.items() if paths} - set(classes))
            if unknown:
                raise DataError(f"{root / name} has class(es) {', '.join(unknown)} that train/ does not "
                                "have; the class sets must match. Add them to train/ or remove them.")
        splits = {name: FileSplit(*_flatten(scan, classes)) for name, scan in scans.items()}
    else:
        scan = _scan(root, problems, strict)
        classes = _classes(scan, root, problems)
        paths, labels = _flatten(scan, classes)
        fractions_used = fractions or {"train": 0.8, "val": 0.1, "test": 0.1}
        parts = stratified_split(labels.numpy(), fractions_used, seed)
        splits = {name: FileSplit([paths[i] for i in idx], labels[idx]) for name, idx in parts.items() if len(idx)}
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
        raise DataError(f"{root}: {len(problems)} problem(s) with --strict: " + " ".join(problems))
    return Dataset(f"folder:{root}", classes, splits, kind="photos", problems=problems)


def _scan(folder: Path, problems: list[str], decode: bool) -> dict[str, list[Path]]:
    """Readable image files per class subfolder; unreadable and non-image files go to `problems`."""
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = {d.name: sorted(f for f in d.rglob("*") if f.is_file() and not f.name.startswith("."))
             for d in class_dirs}
    stray = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if stray:
        problems.append(f"{folder} has {len(stray)} image(s) outside class subfolders, left out "
                        f"({_names(stray)}); move them into a <class>/ folder.")
    bad: list[str] = []
    total = sum(map(len, files.values()))
    with tqdm(total=total, desc=f"checking {folder.name}", unit="file", disable=total < 2000) as bar:
        for name, paths in files.items():
            files[name] = [p for p in paths if _readable(p, bad, decode)]
            bar.update(len(paths))
    if bad:
        problems.append(f"{len(bad)} file(s) under {folder} skipped: {'; '.join(bad[:_SHOWN])}"
                        + (f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else "")
                        + ". Remove or fix them.")
    return files


def _readable(path: Path, bad: list[str], decode: bool) -> bool:
    """True for an image file PIL can check (`decode`: fully decode, which also finds truncated
    JPEGs; else only the header and structure); otherwise its reason is added to `bad`."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        bad.append(f"{path.name} (not an image file)")
        return False
    try:
        with Image.open(path) as image:
            image.load() if decode else image.verify()
        return True
    except UNREADABLE as err:
        bad.append(f"{path.name} (unreadable: {err})")
        return False


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


def _flatten(scan: dict[str, list[Path]], classes: list[str]) -> tuple[list[Path], torch.Tensor]:
    """All paths in class order, with their label indices."""
    paths = [p for c in classes for p in scan.get(c, [])]
    labels = torch.tensor([i for i, c in enumerate(classes) for _ in scan.get(c, [])], dtype=torch.int64)
    return paths, labels


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
        return FileSplit(split.paths + extra.paths, torch.cat([split.labels, labels]))
    shape = Preprocess(size=tuple(split.images.shape[-2:]), channels=split.images.shape[1],
                       mean=(0.0,) * split.images.shape[1], std=(1.0,) * split.images.shape[1])
    images = torch.stack([shape.prepare(extra[i][0]) for i in range(len(extra))])
    return TensorSplit(torch.cat([split.images, images]), torch.cat([split.labels, labels]))
