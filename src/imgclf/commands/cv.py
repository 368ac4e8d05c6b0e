"""imgclf cv: cross-validation and seeds of a training config."""

from __future__ import annotations

import argparse

from imgclf.commands.common import Parents, positive
from imgclf.commands.overrides import config_options, resolved


def add_parser(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """imgclf cv."""
    cv = commands.add_parser(
        "cv", parents=[parents.logs], help="k-fold cross-validation and/or several seeds of a training config",
        description="Train a config once per fold (stratified, on the training data) and seed; report each run "
                    "and the mean and standard deviation. Takes the same options as train.")
    config_options(cv, ("dataset", "model", "data-dir", "epochs", "time", "device", "name", "out"))
    cv.add_argument("--folds", type=positive, default=5, help="stratified folds (default 5; 1: the usual split)")
    cv.add_argument("--seeds", type=positive, default=1, help="seeds per fold (default 1)")
    cv.set_defaults(run=_cv, overrides=True)


def _cv(args: argparse.Namespace) -> None:
    from imgclf.cv import check_counts, cross_validate

    check_counts(args.folds, args.seeds)  # before the data is read for the recipe
    result, path = cross_validate(resolved(args)[0], args.folds, args.seeds,
                                  progress=not args.quiet)
    shown = [m for m in ("val_acc", "val_loss", "test_acc") if m in result["summary"]]
    print(f"{'fold':>4} {'seed':>4}  " + "".join(f"{m:>10}" for m in shown) + "  run")
    for r in result["runs"]:
        print(f"{r['fold']:>4} {r['seed']:>4}  " + "".join(f"{r[m]:>10.4f}" for m in shown) + f"  {r['run']}")
    print("mean +/- std (sample): " + ", ".join(
        f"{m} {result['summary'][m]['mean']:.4f} +/- {result['summary'][m]['std']:.4f}" for m in shown))
    print(f"results: {path}")
