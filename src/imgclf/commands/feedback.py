"""imgclf feedback stats|export: the corrections collected by imgclf serve."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.commands.common import Parents


def add_parser(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """imgclf feedback stats DB and imgclf feedback export DB."""
    feedback = commands.add_parser("feedback", help="the corrections collected by imgclf serve").add_subparsers(
        dest="feedback_command", required=True, metavar="ACTION")
    stats = feedback.add_parser("stats", parents=[parents.logs],
                                help="counts, corrections per label, common confusions")
    stats.add_argument("db", metavar="DB", help="the feedback database: file or URL (imgclf serve --feedback-db)")
    stats.set_defaults(run=_feedback_stats)
    dump = feedback.add_parser("export", parents=[parents.logs], help="the images as a <label>/ folder to train on")
    dump.add_argument("db", metavar="DB", help="the feedback database: file or URL")
    dump.add_argument("--out", type=Path, required=True, help="folder to write <label>/<id>.<format> into")
    dump.set_defaults(run=_feedback_export)


def _feedback_stats(args: argparse.Namespace) -> None:
    from imgclf.serve.feedback import stats

    r = stats(args.db)
    print(f"{r['feedback']} feedback rows; {r['confirmed']} confirmed the prediction")
    print("per label: " + (", ".join(f"{label}: {n}" for label, n in r["per_label"].items()) or "none"))
    print("most common corrections: " + (", ".join(f"{c['predicted']} -> {c['label']} ({c['count']})"
                                                   for c in r["confusions"]) or "none"))
    if r["unscored"]:
        print(f"not counted above: {r['unscored']} rows without a prediction (images sent with a correction to an "
              "older server)")
    print("by model version: " + ", ".join(f"{v or 'unknown'}: {n}" for v, n in r["model_versions"].items()))


def _feedback_export(args: argparse.Namespace) -> None:
    from imgclf.serve.feedback import export

    count = export(args.db, args.out)
    print(f"wrote {count} images into {args.out}/<label>/ (train on them: --dataset folder:{args.out})")
