"""imgclf models list: the model zoo."""

from __future__ import annotations

import argparse

from imgclf.commands.common import Parents
from imgclf.commands.summary import build_meta
from imgclf.errors import ImgclfError


def add_parser(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """imgclf models list [PATTERN]."""
    models = commands.add_parser("models", help="the model zoo").add_subparsers(
        dest="models_command", required=True, metavar="ACTION")
    listing = models.add_parser("list", parents=[parents.logs],
                                help="names, parameters and default input of every model")
    listing.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*'")
    listing.set_defaults(run=_models_list)


def _models_list(args: argparse.Namespace) -> None:
    from imgclf.models import list_models, model_entry, summarize

    names = list_models(args.pattern)
    if not names:
        raise ImgclfError(f"no model matches {args.pattern!r}; `imgclf models list` shows them all.")
    print(f"{'model':<20}{'params':>13}{'mult-adds':>12}  {'input':<11}{'pretrained':<11}description")
    for name in names:
        entry = model_entry(name)
        model, shape = build_meta(name, 10, None)
        summary = summarize(model, shape)
        print(f"{name:<20}{summary.total:>13,}{summary.macs / 1e6:>11,.1f}M  {'x'.join(map(str, shape)):<11}"
              f"{'yes' if entry.pretrained else 'no':<11}{entry.description}")
    print("params and multiply-adds with a 10-class head at the default input.")
