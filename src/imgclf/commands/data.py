"""imgclf data info|preview: look at a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imgclf.commands.common import Parents, fractions, positive
from imgclf.errors import ImgclfError


def add_parser(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """imgclf data info and imgclf data preview."""
    data = commands.add_parser("data", help="look at a dataset").add_subparsers(
        dest="data_command", required=True, metavar="ACTION")
    source = argparse.ArgumentParser(add_help=False, parents=[parents.logs])
    source.add_argument("source", help="dataset name (mnist, fashion-mnist, kmnist, cifar10, digits) "
                                       "or folder:PATH")
    source.add_argument("--data-dir", type=Path, help="folder with the dataset's files (default: "
                                                      "$IMGCLF_DATA_DIR, then the cache, then download)")
    source.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    source.add_argument("--split", type=fractions, default=None, metavar="TRAIN,VAL,TEST",
                        help="fractions to split a plain image folder (default 0.8,0.1,0.1)")
    source.add_argument("--seed", type=int, default=0, help="seed of that split")
    source.add_argument("--strict", action="store_true", help="fail on unreadable files, empty classes, ...")

    info = data.add_parser("info", parents=[source], help="counts per class and split, shapes, mean/std")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(run=_data_info)
    preview = data.add_parser("preview", parents=[source], help="save a labelled grid of samples")
    preview.add_argument("--out", type=Path, default=Path("preview.png"), help="PNG to write")
    preview.add_argument("--subset", default="train", help="which split to show (default train)")
    preview.add_argument("--per-class", type=positive, default=8, help="samples per class (default 8)")
    preview.set_defaults(run=_data_preview)


def _load(args: argparse.Namespace):
    from imgclf.data import load_dataset

    return load_dataset(args.source, args.data_dir, allow_download=not args.no_download,
                        fractions=args.split, seed=args.seed, strict=args.strict)


def _data_info(args: argparse.Namespace) -> None:
    from imgclf.data import describe

    info = describe(_load(args))
    if args.json:
        print(json.dumps(info, indent=2))
        return
    splits = list(info["splits"])
    print(f"{info['name']}: {len(info['classes'])} classes, "
          + ", ".join(f"{info['splits'][s]['count']:,} {s}" for s in splits))
    print("image shape (CxHxW): " + ", ".join(f"{shape} ({n:,})" for shape, n in list(info["shapes"].items())[:5])
          + (" ..." if len(info["shapes"]) > 5 else ""))
    print(f"train mean {_floats(info['mean'])}  std {_floats(info['std'])}")
    width = max(len("class"), *map(len, info["classes"]))
    print(f"\n{'class':<{width}}  " + "  ".join(f"{s:>8}" for s in splits))
    for c in info["classes"]:
        print(f"{c:<{width}}  " + "  ".join(f"{info['splits'][s]['per_class'][c]:>8,}" for s in splits))
    if info["problems"]:
        print(f"\n{len(info['problems'])} problem(s) found; see the warnings above.")


def _data_preview(args: argparse.Namespace) -> None:
    from imgclf.data.preview import preview_grid

    if args.out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        raise ImgclfError(f"--out {args.out} needs an image file name ending in .png (or .jpg, .webp, .bmp).")
    dataset = _load(args)
    grid = preview_grid(dataset.split(args.subset), dataset.classes, per_class=args.per_class, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out} ({grid.width}x{grid.height}, {args.subset} split of {dataset.name})")


def _floats(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"
