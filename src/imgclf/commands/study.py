"""imgclf study paper: studies regenerated from real runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.commands.common import Parents


def add_parser(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """imgclf study paper."""
    study = commands.add_parser("study", help="studies regenerated from real runs").add_subparsers(
        dest="study_command", required=True, metavar="STUDY")
    paper = study.add_parser(
        "paper", parents=[parents.logs],
        help="the seed paper's comparison on MNIST: Tables II-IV, McNemar, PAPER.md",
        description="Train and evaluate the paper CNN, the enhanced CNN and its ablations, AlexNet, ResNet-18, "
                    "MobileNetV3 and imgclf's recipes on MNIST, run the Table III search, and write PAPER.md and "
                    "paper.html. Re-running skips finished work.")
    paper.add_argument("--out", type=Path, default=Path("studies/paper"), help="output folder (default studies/paper)")
    paper.add_argument("--budget", default="cpu", help="cpu (about half an hour on 2 cores, the default) or smoke "
                                                       "(seconds, to check the pipeline)")
    paper.add_argument("--dataset", default="mnist", help="the dataset (default mnist, as in the paper)")
    paper.add_argument("--data-dir", help="folder with the dataset's files (default: $IMGCLF_DATA_DIR, cache, "
                                          "download)")
    paper.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    paper.add_argument("--recipes", type=Path, help="folder of the recipes (default: the packaged ones)")
    paper.set_defaults(run=_study_paper)


def _study_paper(args: argparse.Namespace) -> None:
    from imgclf.study import RECIPES, command_line, study_paper

    path = study_paper(args.out, budget=args.budget, dataset=args.dataset, data_dir=args.data_dir, device=args.device,
                       recipes=args.recipes or RECIPES, command=command_line(), progress=not args.quiet)
    print(f"wrote {path} and {path.with_name('paper.html')} (runs in {args.out / 'runs'})")
