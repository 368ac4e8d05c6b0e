"""imgclf config show: every config key with its value and meaning."""

from __future__ import annotations

import argparse

import yaml

from imgclf.commands.common import Parents


def add_parser(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """imgclf config show [RECIPE]."""
    configs = commands.add_parser("config", help="the config keys").add_subparsers(
        dest="config_command", required=True, metavar="ACTION")
    show = configs.add_parser("show", parents=[parents.logs],
                              help="every config key with its value and meaning, as YAML")
    show.add_argument("recipe", nargs="?", metavar="RECIPE",
                      help="a YAML recipe or packaged recipe name (default: the defaults)")
    show.set_defaults(run=_config_show)


def _config_show(args: argparse.Namespace) -> None:
    from imgclf.config import config_keys, load_config

    section = None
    for key, value, default, meaning in config_keys(load_config(args.recipe)):
        *parent, name = key.split(".")
        if parent and parent[0] != section:
            section = parent[0]
            print(f"{section}:")
        note = "" if value == default else f" [default {_yaml_text(default)}]"
        print(f"{'  ' * len(parent)}{name}: {_yaml_text(value)}  # {meaning}{note}")


def _yaml_text(value: object) -> str:
    """A value as it is written in a YAML recipe, on one line."""
    return yaml.safe_dump([value], default_flow_style=True, width=1 << 30).strip()[1:-1]  # [v] -> v
