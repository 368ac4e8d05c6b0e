"""imgclf predict: classify images with a trained model."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from imgclf.commands.common import Parents, positive, unknown_options
from imgclf.errors import ImgclfError


def add_parser(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """imgclf predict RUN IMAGE..."""
    predict = commands.add_parser("predict", parents=[parents.logs], help="classify images with a trained model")
    predict.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory or an exported model file")
    predict.add_argument("images", nargs="+", metavar="IMAGE",
                         help="image files, folders (every image under them) or patterns such as 'new/**/*.jpg'")
    predict.add_argument("--top", type=positive, default=3, help="classes shown per image (default 3)")
    predict.add_argument("--tta", action="store_true",
                         help="test-time augmentation: average each image's logits with its mirror image's")
    predict.add_argument("--format", choices=["table", "json", "csv"], default="table",
                         help="table (one line per image, the default), json or csv")
    predict.add_argument("--out", type=Path, help="write the predictions to this file instead of the screen")
    predict.add_argument("--batch-size", type=positive, default=64, help="images per forward pass (default 64)")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    unknown_options(predict)
    predict.set_defaults(run=_predict)


def _predict(args: argparse.Namespace) -> int:
    from imgclf.files import atomic_write
    from imgclf.predict import image_paths, predict_files

    paths = image_paths(args.images)
    if not paths:
        raise ImgclfError(f"no images in {', '.join(map(str, args.images))}; pass image files, folders or patterns.")
    found = predict_files(args.run_dir, paths, args.top, args.tta, batch_size=args.batch_size, device=args.device,
                          progress=not args.quiet, unknown=args.unknown, unknown_rate=args.unknown_rate)
    text = _PREDICTION_FORMATS[args.format](found)
    if args.out:
        atomic_write(args.out, lambda tmp: tmp.write_text(text))
        print(f"wrote {len(found)} predictions to {args.out}")
    else:
        print(text, end="")
    failed = sum(p.error is not None for p in found)
    if failed:
        print(f"{failed} of {len(found)} images could not be classified (see their lines)", file=sys.stderr)
    return 1 if failed else 0


def _table(found: list) -> str:
    return "".join(f"{p.path}: " + (f"error: {p.error}" if p.error else _unknown(p) + ", ".join(
        f"{label} {prob:.3f}" for label, prob in p.top)) + "\n" for p in found)


def _unknown(p) -> str:
    """How the table says a prediction was rejected as unknown."""
    return f"unknown (score {p.unknown_score:.4g}); best guesses " if p.unknown else ""


def _json(found: list) -> str:
    return json.dumps([{"path": str(p.path), "top": [{"label": label, "probability": prob} for label, prob in p.top],
                        **({} if p.unknown_score is None else {"unknown": p.unknown, "unknown_score": p.unknown_score}),
                        "error": p.error} for p in found], indent=2) + "\n"


def _csv(found: list) -> str:
    top = max((len(p.top) for p in found), default=0)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    scored = any(p.unknown_score is not None for p in found)
    writer.writerow(["path", *(f"{k}_{i}" for i in range(1, top + 1) for k in ("label", "probability")),
                     *(["unknown", "unknown_score"] if scored else []), "error"])
    for p in found:
        cells = [c for label, prob in p.top for c in (label, f"{prob:.6f}")]
        unknown = [int(p.unknown), "" if p.unknown_score is None else f"{p.unknown_score:.6g}"] if scored else []
        writer.writerow([p.path, *cells, *[""] * (2 * top - len(cells)), *unknown, p.error or ""])
    return buffer.getvalue()


_PREDICTION_FORMATS = {"table": _table, "json": _json, "csv": _csv}
