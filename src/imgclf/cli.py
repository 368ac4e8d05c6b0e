"""The `imgclf` command: builds the parser from the command modules (imgclf.commands), runs the chosen one and
turns errors into exit codes. Nothing else lives here."""

from __future__ import annotations

import argparse
import difflib
import logging
import sys

from imgclf import __version__
from imgclf.commands import COMMANDS
from imgclf.commands.common import parents, rank
from imgclf.errors import ImgclfError


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 user error, 2 usage)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    _check_unknown(parser, args, extra)
    args.extra = extra
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    if rank():  # under torchrun only rank 0 reports progress; the others say only what goes wrong
        level, args.quiet = max(level, logging.WARNING), True
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")  # other libraries: warnings
    logging.getLogger("imgclf").setLevel(level)
    try:
        status = args.run(args) or 0  # a command may report a partial failure in its exit status
    except ImgclfError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # disk full, permission denied, ...: the sentence the OS gives, with the path
        print(f"error: {err.strerror or err}{f': {err.filename}' if err.filename else ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgclf", description="Image classification with CNNs.")
    parser.add_argument("--version", action="version", version=f"imgclf {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = parents()
    for command in COMMANDS:
        command.add_parser(commands, shared)
    return parser


def _check_unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """A usage error for an argument the command does not take (--section.key options aside, where taken),
    naming the closest option."""
    dotted = getattr(args, "overrides", False)
    unknown = [t for t in extra if not dotted or (t.startswith("--") and "." not in t.partition("=")[0])]
    if not unknown:
        return  # --section.key options and their values: the config checks them
    from imgclf.config import config_keys, suggest

    command = parser
    while command._subparsers is not None:  # down to the (sub)command that was parsed
        chooser = next(a for a in command._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))
        command = chooser.choices[getattr(args, chooser.dest)]
    flags = [flag for action in command._actions for flag in action.option_strings if flag not in ("-h", "--help")]
    keys = {key.rsplit(".", 1)[-1]: key for key, *_ in config_keys()} if dotted else {}  # lr: train.lr
    name = unknown[0].partition("=")[0]
    leaf = name.lstrip("-").replace("-", "_")
    close = next(iter(difflib.get_close_matches(name, flags, n=1)), None) if leaf not in keys else None
    key = None if close else suggest(leaf, list(keys))
    close = f"--{keys[key]}" if key else close
    command.error(f"unrecognized argument {unknown[0]}" + (f"; did you mean {close}?" if close else ""))
