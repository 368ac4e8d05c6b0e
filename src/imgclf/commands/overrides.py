"""The one mapping from command-line flags to config keys, for the commands built on a training config."""

from __future__ import annotations

import argparse
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imgclf.commands.common import yaml_value
from imgclf.config import Attack
from imgclf.errors import ImgclfError

CONFIG_HELP = "a YAML recipe: a file, or a packaged one by name (folder, mnist-fast, ...: imgclf config show NAME)"


@dataclass(frozen=True)
class Shortcut:
    """A flag that sets one config key, with train's help for it."""

    key: str
    help: str
    type: Callable[[str], object] = str
    choices: tuple[str, ...] | None = None


SHORTCUTS = {
    "dataset": Shortcut("data.dataset", "dataset name or folder:PATH (data.dataset)"),
    "model": Shortcut("model.name", "model name, or auto (the default): chosen from the data (model.name)"),
    "data-dir": Shortcut("data.data_dir", "folder with the dataset's files (data.data_dir)"),
    "epochs": Shortcut("train.epochs", "epochs, may be fractional (train.epochs)", float),
    "time": Shortcut("train.time", "wall-time budget such as 5m (train.time)"),
    "device": Shortcut("train.device", "auto, cpu, cuda, mps (train.device)"),
    "name": Shortcut("name", "run directory name (default: <model>-<dataset>-<time>)"),
    "out": Shortcut("out", "parent folder of run directories (default runs)"),
    "adversarial": Shortcut("train.adversarial", "adversarial training: fit on attacked images (train.adversarial)",
                            choices=typing.get_args(Attack)),
    "eps": Shortcut("train.eps", "adversarial training budget, L-inf in [0, 1] pixels (train.eps)", float),
    "noise": Shortcut("data.noise", "noise augmentation: gaussian std up to this (data.noise)", float),
    "track": Shortcut("track", "experiment trackers to log into, comma-separated: tensorboard, mlflow (track)",
                      lambda text: [name.strip() for name in text.split(",") if name.strip()]),
    "track-uri": Shortcut("track_uri", "MLflow tracking URI (default $MLFLOW_TRACKING_URI) (track_uri)"),
}


def config_options(parser: argparse.ArgumentParser, flags: tuple[str, ...], own: bool = False) -> None:
    """--config and the given shortcut flags; own: train's help for them, else a pointer to train's."""
    parser.add_argument("--config", type=Path, help=CONFIG_HELP)
    for flag in flags:
        shortcut = SHORTCUTS[flag]
        parser.add_argument(f"--{flag}", type=shortcut.type, choices=shortcut.choices,
                            help=shortcut.help if own else f"as for train ({shortcut.key})")


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """Shortcut flags and --section.key options as one {dotted key: value} mapping."""
    given = {shortcut.key: getattr(args, flag.replace("-", "_")) for flag, shortcut in SHORTCUTS.items()
             if getattr(args, flag.replace("-", "_"), None) is not None}
    given.update(_dotted(args.extra))
    return given


def _dotted(tokens: list[str]) -> dict[str, object]:
    """['--train.lr', '0.01', '--model.options={layers: 10}'] -> {'train.lr': 0.01, ...}, values read as YAML."""
    found, i = {}, 0
    while i < len(tokens):
        key, sep, value = tokens[i].partition("=")
        if not key.startswith("--") or "." not in key:
            raise ImgclfError(f"unexpected argument {tokens[i]!r}; config keys look like --train.lr 0.01.")
        if not sep:
            if i + 1 >= len(tokens):
                raise ImgclfError(f"{key} needs a value, e.g. {key} 0.01.")
            value, i = tokens[i + 1], i + 1
        found[key[2:]] = yaml_value(value)
        i += 1
    return found


def resolved(args: argparse.Namespace, given: dict[str, object] | None = None, summary: bool = False):
    """The config from --config and the options (default: all of them), with model auto replaced by the recipe
    chosen from the data (the options given win), checked first; and the plan (to print)."""
    from imgclf.config import given_keys, load_config
    from imgclf.training.loop import check_settings
    from imgclf.training.recipe import resolve

    given = overrides(args) if given is None else given
    config = load_config(args.config, given)
    check_settings(config)
    plan = resolve(config, given_keys(args.config, given), summary=summary, named="model.name" in given)
    return plan.config, plan
