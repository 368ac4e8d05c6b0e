"""What several commands share: the parent parsers, argument types and the process rank."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from imgclf.evaluate.evaluation import ScoreOn

MOVED = ("where the run's data is now, if it moved: its image folder, or the folder with a named dataset's files "
         "(default: where it was at training)")


@dataclass(frozen=True)
class Parents:
    """Parent parsers: logs (every command), scored_on (evaluate, compare, robustness), scoring (evaluate, compare)."""

    logs: argparse.ArgumentParser
    scored_on: argparse.ArgumentParser
    scoring: argparse.ArgumentParser


def parents() -> Parents:
    """The shared parent parsers, new for each top parser."""
    logs = argparse.ArgumentParser(add_help=False)
    logs.add_argument("-v", "--verbose", action="store_true", help="debug log output")
    logs.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")

    scored_on = argparse.ArgumentParser(add_help=False, parents=[logs])
    which = scored_on.add_mutually_exclusive_group()
    which.add_argument("--dataset", dest="source", metavar="NAME",
                       help="score on this dataset (default: the run's own)")
    which.add_argument("--data", dest="source", metavar="folder:PATH",
                       help="score on a folder of images (all of it; or, if it holds the run's own data moved, "
                            "the split the run recorded)")
    scored_on.add_argument("--data-dir", help=MOVED)
    scored_on.add_argument("--split", help="split to score (default test, or val when the data has no test split; "
                                           "val is the run's validation)")
    scored_on.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")

    scoring = argparse.ArgumentParser(add_help=False, parents=[scored_on])
    scoring.add_argument("--resamples", type=positive, default=1000, help="bootstrap resamples (default 1000)")
    scoring.add_argument("--tta", action="store_true",
                         help="test-time augmentation: average each image's logits with its mirror image's")
    scoring.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    scoring.add_argument("--latency-runs", type=positive, default=100,
                         help="timed single-image passes for the latency percentiles (default 100)")
    return Parents(logs, scored_on, scoring)


def unknown_options(parser: argparse.ArgumentParser) -> None:
    """--unknown and --unknown-rate (predict, serve): answer unknown for images unlike the training data."""
    parser.add_argument("--unknown", action="store_true",
                        help="answer unknown (with the score) for images unlike the training data, by the run's "
                             "unknown-input detection (fitted at training, or by imgclf evaluate --fit-unknown)")
    parser.add_argument("--unknown-rate", type=float, metavar="SHARE",
                        help="with --unknown: the share of validation images answered unknown (default: as fitted, "
                             "0.05); higher rejects more")


def score_on(args: argparse.Namespace) -> ScoreOn:
    """The data a command scores on, from the scored_on parent's --dataset/--data, --data-dir, --split, --device."""
    from imgclf.evaluate.evaluation import ScoreOn  # torch: imported when a command runs, not to parse

    return ScoreOn(args.source, args.data_dir, args.split, args.device)


def positive(text: str) -> int:
    """A whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def fractions(text: str) -> dict[str, float]:
    """'0.8,0.1,0.1' -> {'train': 0.8, 'val': 0.1, 'test': 0.1}: shares of the images, adding up to at most 1."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.8,0.1,0.1, got {text!r}") from None
    if len(values) not in (2, 3) or not all(math.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected 2 or 3 non-negative fractions (train,val[,test]), got {text!r}")
    if sum(values) > 1 + 1e-9:  # shares of the images: more than all of them is a typo, not weights to rescale
        raise argparse.ArgumentTypeError(f"the fractions {text} add up to {sum(values):g}, more than 1; give "
                                         "shares of the images that add up to 1, e.g. 0.8,0.1,0.1")
    return dict(zip(("train", "val", "test"), values, strict=False))


def number_list(text: str) -> tuple[float, ...]:
    """'0.1,0.3' -> (0.1, 0.3)."""
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, e.g. 0.1,0.3, got {text!r}") from None


def names(text: str, every: list[str] | tuple[str, ...]) -> list[str]:
    """'all', 'none' or a comma list of names."""
    if text == "all":
        return list(every)
    return [] if text == "none" else [t.strip() for t in text.split(",") if t.strip()]


def yaml_value(text: str) -> object:
    """A command-line value read as YAML (10 -> int, true -> bool, {a: 1} -> dict), else kept as text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    return int(os.environ.get("RANK", "0"))
