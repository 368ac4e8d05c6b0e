"""imgclf summary: a model's layer table."""

from __future__ import annotations

import argparse

from imgclf.commands.common import Parents, positive, yaml_value
from imgclf.errors import ImgclfError


def add_parser(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """imgclf summary MODEL."""
    summary = commands.add_parser("summary", parents=[parents.logs],
                                  help="Keras-style layer table, parameters, multiply-adds, size")
    summary.add_argument("model", help="a model name (imgclf models list)")
    summary.add_argument("--input", type=_shape, default=None, metavar="CxHxW",
                         help="input shape (default: the model's own, e.g. 1x28x28 or 3x224x224)")
    summary.add_argument("--num-classes", type=positive, default=10, help="classes of the head (default 10)")
    summary.add_argument("--freeze", default="none", help="backbone, none, or a number of stages")
    summary.add_argument("--option", action="append", default=[], type=_option, metavar="KEY=VALUE",
                         help="a model option, e.g. --option layers=10 --option kernel=5 (repeatable)")
    summary.set_defaults(run=_summary)


def build_meta(name: str, num_classes: int, shape: tuple[int, int, int] | None, **kwargs):
    """The model on the meta device: real shapes and counts, no memory or compute for the weights."""
    import torch

    from imgclf.models import create_model, model_entry

    if shape is not None and shape[1] != shape[2]:
        raise ImgclfError(f"imgclf models take square inputs; got {shape[1]}x{shape[2]}.")
    with torch.device("meta"):
        model = create_model(name, num_classes, shape[0] if shape else None,
                             shape[1] if shape else model_entry(name).default_size, **kwargs)
    return model, (model.input_spec.channels, *model.input_spec.size)


def _summary(args: argparse.Namespace) -> None:
    from imgclf.models import summarize

    options = dict(args.option)
    reserved = sorted(set(options) & {"num_classes", "in_channels", "image_size", "pretrained", "weights", "freeze"})
    if reserved:
        raise ImgclfError(f"--option {', '.join(reserved)} is not a model option; use --input, --num-classes "
                          "or --freeze instead.")
    model, shape = build_meta(args.model, args.num_classes, args.input, freeze=args.freeze, **options)
    summary = summarize(model, shape)
    print(f"{args.model} at input {'x'.join(map(str, shape))}, {args.num_classes} classes")
    print(summary.table())


def _shape(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected CxHxW such as 3x224x224, got {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as layers=10, got {text!r}")
    return key, yaml_value(value)
