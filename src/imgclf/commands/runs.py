"""imgclf runs: the runs in a folder, with their model, data, test accuracy, time and status."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.commands.common import Parents


def add_parser(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """imgclf runs [FOLDER]."""
    runs = commands.add_parser("runs", parents=[parents.logs],
                               help="list the runs in a folder: model, dataset, test accuracy, time, status, date")
    runs.add_argument("folder", nargs="?", type=Path, default=Path("runs"), metavar="FOLDER",
                      help="where the runs are, searched 3 levels down (default runs)")
    runs.add_argument("--sort", default="date", metavar="KEY",
                      help="acc (most accurate first), time (fastest first), date (newest first; the default), "
                           "name, model, dataset or status (A-Z)")
    runs.add_argument("--reverse", action="store_true", help="sort the other way")
    runs.add_argument("--where", action="append", default=[], metavar="CONDITION",
                      help="only runs where KEY=VALUE, e.g. dataset=mnist, status=done; also !=, >, <, >=, <= "
                           "as in acc>0.9 (repeatable: all must hold)")
    runs.add_argument("--format", choices=("table", "json", "csv"), default="table",
                      help="table (default), or json / csv with the same fields, numbers as numbers")
    runs.add_argument("--html", type=Path, metavar="FILE",
                      help="write one standalone page listing the runs, each linking its report, instead")
    runs.set_defaults(run=_runs)


def _runs(args: argparse.Namespace) -> None:
    from imgclf.commands.tune import text_table
    from imgclf.files import atomic_write
    from imgclf.runs import HEADERS, list_runs, runs_cells, runs_csv, runs_html, runs_json

    rows = list_runs(args.folder, args.where, args.sort, args.reverse)
    if args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.html, lambda tmp: tmp.write_text(runs_html(rows, args.folder, args.html)))
        print(f"page: {args.html} ({len(rows)} runs)")
    elif args.format != "table":
        print((runs_json if args.format == "json" else runs_csv)(rows), end="")
    elif rows:
        print("\n".join(text_table(HEADERS, [runs_cells(row) for row in rows], widest=64)))
    else:
        print(f"no run in {args.folder} has {' and '.join(args.where)}")
