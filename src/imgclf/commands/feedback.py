"""imgclf feedback stats|queue|export: the corrections and the kept images collected by imgclf serve."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from imgclf.commands.common import Parents, positive


def add_parser(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """imgclf feedback stats DB, imgclf feedback queue DB and imgclf feedback export DB."""
    feedback = commands.add_parser("feedback", help="the corrections collected by imgclf serve").add_subparsers(
        dest="feedback_command", required=True, metavar="ACTION")
    stats = feedback.add_parser("stats", parents=[parents.logs],
                                help="counts, corrections per label, common confusions")
    stats.add_argument("db", metavar="DB", help="the feedback database: file or URL (imgclf serve --feedback-db)")
    stats.set_defaults(run=_feedback_stats)
    queue = feedback.add_parser("queue", parents=[parents.logs],
                                help="the kept images (serve --keep-unlabelled) whose label would help most, first")
    queue.add_argument("db", metavar="DB", help="the feedback database: file or URL")
    queue.add_argument("--by", choices=["margin", "unknown"], default="margin",
                       help="margin (default): the model hesitated most first (least top-1 minus top-2 "
                            "probability); unknown: most unlike the training data first")
    queue.add_argument("--limit", type=positive, default=20, help="images listed (default 20)")
    queue.add_argument("--format", choices=["table", "json"], default="table", help="table (default) or json")
    queue.set_defaults(run=_feedback_queue)
    dump = feedback.add_parser("export", parents=[parents.logs], help="the images as a <label>/ folder to train on")
    dump.add_argument("db", metavar="DB", help="the feedback database: file or URL")
    dump.add_argument("--out", type=Path, required=True, help="folder to write <label>/<id>.<format> into")
    dump.add_argument("--unlabelled", action="store_true",
                      help="write the kept images that have no label yet instead, as <prediction_id>.<format> in "
                           "one plain folder")
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


def _feedback_queue(args: argparse.Namespace) -> None:
    from imgclf.serve.feedback import queue

    queued = queue(args.db, args.by, args.limit)
    if args.format == "json":
        print(json.dumps([asdict(item) for item in queued], indent=2))
        return
    if not queued:
        print("nothing to label: no kept image is without a correction (serve --keep-unlabelled N keeps them)")
        return
    print(f"{'prediction_id':<32}  {'predicted':<12}  {'probability':>11}  {'margin':>6}  {'unknown':>7}")
    for item in queued:
        unknown = "-" if item.unknown_score is None else f"{item.unknown_score:.3f}"
        print(f"{item.prediction_id:<32}  {item.predicted:<12}  {item.probability:>11.3f}  {item.margin:>6.3f}  "
              f"{unknown:>7}")


def _feedback_export(args: argparse.Namespace) -> None:
    from imgclf.serve.feedback import export, export_unlabelled

    if args.unlabelled:
        count = export_unlabelled(args.db, args.out)
        print(f"wrote {count} unlabelled images into {args.out}/")
        return
    count = export(args.db, args.out)
    print(f"wrote {count} images into {args.out}/<label>/ (train on them: --dataset folder:{args.out})")
