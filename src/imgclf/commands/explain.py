"""imgclf explain: attributions drawn over images."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.commands.common import Parents, names


def add_parser(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """imgclf explain RUN IMAGE..."""
    explain = commands.add_parser("explain", parents=[parents.logs],
                                  help="Grad-CAM, saliency or integrated gradients drawn over images")
    explain.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory")
    explain.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    explain.add_argument("--method", default="gradcam",
                         help="gradcam, saliency, integrated-gradients, a comma list, or all (default gradcam)")
    explain.add_argument("--target", metavar="CLASS", help="class to explain (default: the predicted one)")
    explain.add_argument("--layer", help="Grad-CAM layer (default: the model's target layer, or the last one whose "
                                         "maps are at least 4x4 at the input size; see imgclf summary)")
    explain.add_argument("--out", type=Path, help="folder for the overlays (default RUN/explanations)")
    explain.set_defaults(run=_explain)


def _explain(args: argparse.Namespace) -> None:
    from imgclf.explain import METHODS, explain_files

    records, grid = explain_files(args.run_dir, args.images, tuple(names(args.method, METHODS)), target=args.target,
                                  layer=args.layer, out=args.out)
    for r in records:
        why = "" if r["explained"] == r["predicted"] else f", explaining {r['explained']}"
        print(f"{r['image']}: {r['predicted']} ({r['probability']:.3f}){why} -> "
              + ", ".join(str(path) for path in r["overlays"].values()))
    print(f"all together: {grid}")
