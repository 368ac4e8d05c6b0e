"""imgclf train and imgclf lr-find: a training config, run or swept."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from imgclf.commands.common import Parents, positive, rank
from imgclf.commands.overrides import config_options, overrides, resolved
from imgclf.errors import ImgclfError


def add_parser(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """imgclf train and imgclf lr-find."""
    training = commands.add_parser(
        "train", parents=[parents.logs], help="train a model into a run directory",
        description="Train a model. Any config key can be set as --section.key VALUE, e.g. --train.lr 0.01 "
                    "--model.options '{layers: 10}' (imgclf config show lists every key).")
    config_options(training, ("dataset", "model", "data-dir", "epochs", "time", "device", "name", "out",
                              "adversarial", "eps", "noise", "track", "track-uri"), own=True)
    training.add_argument("--resume", type=Path, metavar="RUN", help="continue this run exactly where it stopped")
    training.set_defaults(run=_train, overrides=True)

    finder = commands.add_parser(
        "lr-find", parents=[parents.logs], help="learning-rate range test: plot and suggested lr",
        description="Train briefly with an exponentially rising learning rate and suggest one. Takes the "
                    "same --config, --dataset, --model and --section.key options as train.")
    config_options(finder, ("dataset", "model", "data-dir", "device"))
    finder.add_argument("--steps", type=positive, help="steps of the sweep (default: 3 epochs of batches, "
                                                       "at least 20 and at most 100)")
    finder.add_argument("--start", type=float, default=1e-6, help="first learning rate (default 1e-6)")
    finder.add_argument("--end", type=float, default=1.0, help="last learning rate (default 1)")
    finder.add_argument("--plot", type=Path, default=Path("lr_find.png"), help="plot to write (default lr_find.png)")
    finder.set_defaults(run=_lr_find, overrides=True)


def _train(args: argparse.Namespace) -> None:
    from imgclf.config import load_config
    from imgclf.training import LostProcess, StopReason, train

    given = overrides(args)
    if args.resume is not None:
        kept = [flag for flag in ("config", "name", "out") if getattr(args, flag) is not None]
        if kept:
            raise ImgclfError(f"--{', --'.join(kept)} cannot be used with --resume: the run keeps its own "
                              "config and folder.")
        saved = args.resume / "config.yaml"
        config = load_config(saved, given) if saved.is_file() else None
    else:
        config, plan = resolved(args, given, summary=not rank())
        if not rank():
            print("\n".join(plan.lines()), flush=True)
    try:
        run = train(config, resume=args.resume, progress=not args.quiet)
    except LostProcess as err:
        # the process group's threads may still wait on the lost process, and unwinding them at exit can
        # abort; the checkpoint is safe on disk, so leave at once
        print(f"error: {err}", file=sys.stderr, flush=True)
        os._exit(1)
    if rank():
        return
    summary, best = run.summary, run.summary.best
    print(f"run: {run.path}")
    print(f"{summary.stopped} after {summary.epochs:.2f} epochs ({summary.steps} steps) "
          f"in {summary.train_seconds:.1f}s of training")
    if best and best.metric != "epoch":
        print(f"best {best.metric} {best.value:.4f} at epoch {best.epoch:.4g}, saved to "
              f"{run.path / 'model.safetensors'}")
    elif best:
        print(f"no validation split: the final weights are saved to {run.path / 'model.safetensors'}")
    if summary.test_acc is not None:
        print(f"test accuracy {summary.test_acc:.4f} (the saved model on the test split)")
    if summary.calibration:
        c = summary.calibration
        print(f"calibrated: temperature {c['temperature']:.3f}, expected calibration error on the validation split "
              f"{c['val_ece_before']:.4f} -> {c['val_ece_after']:.4f}")
    if summary.unknown:
        u = summary.unknown
        print(f"unknown inputs: {u['method']} score; self-check AUROC "
              + ", ".join(f"{kind} {auroc:.3f}" for kind, auroc in u["check"].items()))
        if u["warning"]:
            print(f"warning: {u['warning']}")
    if summary.mlflow_run_id:
        print(f"MLflow run: {summary.mlflow_run_id}")
    if summary.stopped is StopReason.INTERRUPTED:
        raise SystemExit(130)  # saved and resumable, but not finished: tell scripts so


def _lr_find(args: argparse.Namespace) -> None:
    from imgclf.evaluate.plots import lr_find_plot
    from imgclf.training.lr_find import lr_find

    if not 0 < args.start < args.end:
        raise ImgclfError(f"--start must be positive and below --end, got {args.start} and {args.end}.")
    lrs, losses, suggestion = lr_find(resolved(args)[0], args.steps, args.start, args.end,
                                      progress=not args.quiet)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    lr_find_plot(lrs, losses, suggestion, args.plot)
    print(f"swept {len(lrs)} steps from {lrs[0]:.1e} to {lrs[-1]:.1e}; lowest loss {min(losses):.4f}")
    print(f"suggested lr: {suggestion:.2g} (--train.lr {suggestion:.2g}); plot: {args.plot}")
