"""imgclf retrain: fine-tune a served run with its feedback."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.commands.common import MOVED, Parents, positive


def add_parser(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """imgclf retrain RUN --feedback DB."""
    retrain = commands.add_parser("retrain", parents=[parents.logs],
                                  help="fine-tune a run with the feedback it collected; promote it only if better")
    retrain.add_argument("run_dir", type=Path, metavar="RUN", help="the run directory that was served")
    retrain.add_argument("--feedback", required=True, metavar="DB", help="the feedback database: file or URL")
    retrain.add_argument("--epochs", type=float, default=1.0, help="fine-tuning epochs (default 1)")
    retrain.add_argument("--lr-factor", type=float, default=0.1, help="the run's lr times this (default 0.1)")
    retrain.add_argument("--holdout", type=float, default=0.3,
                         help="about this share of the feedback (chosen by image hash) judges the new model "
                              "(default 0.3)")
    retrain.add_argument("--min-holdout", type=positive, default=10,
                         help="fewest held-out feedback images to decide on (default 10)")
    retrain.add_argument("--name", help="name of the new run (default <run>-retrained-<time>)")
    retrain.add_argument("--out", type=Path, help="parent folder of the new run (default: the old run's)")
    retrain.add_argument("--data-dir", help=MOVED)
    retrain.add_argument("--unlabelled", type=Path, metavar="PATH",
                         help="a folder of unlabelled images (any layout) to learn from too, through confident "
                              "pseudo-labels (semi-supervised, data.unlabelled)")
    retrain.set_defaults(run=_retrain)


def _retrain(args: argparse.Namespace) -> None:
    from imgclf.evaluate.stats import format_p
    from imgclf.retrain import retrain

    r = retrain(args.run_dir, args.feedback, epochs=args.epochs, lr_factor=args.lr_factor, holdout=args.holdout,
                min_holdout=args.min_holdout, name=args.name, out=args.out, data_dir=args.data_dir,
                unlabelled=args.unlabelled, progress=not args.quiet)
    unlabelled = f" and the unlabelled images in {r['settings']['unlabelled']}" if r["settings"]["unlabelled"] else ""
    print(f"fine-tuned on the run's data plus {r['feedback_train_images']} corrected images{unlabelled}")
    print(f"{'':<8}{'test accuracy':>16}{'held-out feedback':>20}  run")
    for when in ("before", "after"):
        test, held = r[when]["test"], r[when]["feedback"]
        print(f"{when:<8}{test['accuracy']:>16.4f}{held['accuracy']:>12.4f} of {held['images']:<5}  {r[when]['run']}")
    print(f"McNemar p on the test split: {format_p(r['test_mcnemar']['p_value'])}")
    print(("promoted: " if r["promoted"] else "not promoted: ") + r["reason"]
          + (f" (CURRENT in {Path(r['after']['run']).parent} names it)" if r["promoted"] else ""))
