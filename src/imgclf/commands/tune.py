"""imgclf tune: hyperparameter search around a training config."""

from __future__ import annotations

import argparse

from imgclf.commands.common import Parents, positive
from imgclf.commands.overrides import config_options, overrides, resolved


def add_parser(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """imgclf tune."""
    tune = commands.add_parser(
        "tune", parents=[parents.logs], help="hyperparameter search (Optuna): grid, random or TPE, with pruning",
        description="Search a space of config values; every trial is a run directory selected on validation. "
                    "Takes the same options as train for the base config.")
    config_options(tune, ("dataset", "model", "data-dir", "epochs", "device", "out", "track", "track-uri"))
    tune.add_argument("--space", default="auto", help="auto (the default: lr, weight decay, batch size and dropout "
                                                       "around the model's settings), paper (Table III, for MNIST) "
                                                       "or a YAML file of key: choices/ranges")
    tune.add_argument("--sampler", default="tpe", help="grid, random or tpe (default tpe)")
    tune.add_argument("--pruner", default="median", help="median, hyperband or none (default median)")
    tune.add_argument("--trials", type=positive, help="trials in total (default: the grid's size, else 20)")
    tune.add_argument("--time", help="wall-time budget for this process, e.g. 30m")
    tune.add_argument("--storage", help="an Optuna storage URL shared by workers (default: <study>/study.db)")
    tune.add_argument("--study", help="study name and folder under --out (default tune-<model>)")
    tune.add_argument("--seed", type=int, help="sampler seed, for a reproducible search (default: random; give "
                                               "workers sharing a study different seeds or none)")
    tune.set_defaults(run=_tune, overrides=True)


def _tune(args: argparse.Namespace) -> None:
    from imgclf.config import load_config
    from imgclf.evaluate.stats import format_interval
    from imgclf.training import parse_duration
    from imgclf.tune import SPACES, check_space, load_space, model_space, tune, without_given

    given = {k: v for k, v in overrides(args).items() if k != "train.time"}  # --time: the search budget
    if args.space == "auto":
        config, plan = resolved(args, given)
        space = model_space(config, plan.train_images)
    else:  # a typo in the space fails before the data is read for the recipe
        space = load_space(args.space)
        check_space(load_config(args.config, given), without_given(space, given)[0])
        config, plan = resolved(args, given)
    space, notes = without_given(space, given)
    for note in notes:
        print(f"note: {note}")
    searched = ", ".join(f"{key} {_spec(spec)}" for key, spec in space.items() if isinstance(spec, list | dict))
    print(f"searching {searched}" + (f" ({args.space} space, {config.model.name})" if args.space in SPACES else ""),
          flush=True)
    result = tune(config, space, sampler=args.sampler, pruner=args.pruner, trials=args.trials,
                  timeout=parse_duration(args.time) if args.time else None, storage=args.storage, study=args.study,
                  seed=args.seed, progress=False)
    best = result["best"]
    print(f"{result['trials']} trials ({result['pruned']} pruned, {result['failed']} failed), "
          f"{result['train_seconds']:.0f} s of training; "
          f"best {best['metric']} {best['value']:.4f} (trial {best['trial']}, {best['run']})")
    rows = [[row["parameter"], ", ".join(map(_short, row["values tested"])), _short(row["best"])]
            for row in result["table"]]
    print("\n".join(text_table(["parameter", "values tested", "best"], rows)))
    test = result["test"]
    if test is None:
        print(f"the best trial's run {best['run']} is on another machine: score it there with imgclf evaluate")
    else:
        print(f"test accuracy of the best configuration: {format_interval(test['accuracy'], test['accuracy_ci'])} "
              f"95% CI (imgclf evaluate {best['run']} for the full report)")
    print(f"study: {result['study']} (trials.csv, best.yaml: imgclf train --config {result['study']}/best.yaml)")


def _spec(spec: list | dict) -> str:
    """A searched key's choices or range, short: '32|64' or '0.001-0.1 log'."""
    if isinstance(spec, list):
        return "|".join(map(_short, spec))
    return f"{_short(spec['low'])}-{_short(spec['high'])}" + (" log" if spec.get("log") else "")


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def text_table(headers: list[str], rows: list[list[str]], widest: int = 48) -> list[str]:
    """Left-aligned columns two spaces apart, each as wide as its longest cell; longer cells end in '..'."""
    cells = [[c if len(c) <= widest else c[:widest - 2] + ".." for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
