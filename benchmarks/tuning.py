"""Grid vs random vs TPE with median pruning, on the same small MNIST budget.

    python benchmarks/tuning.py [--out DIR] [--data-dir DIR]

Space: lr {0.001, 0.003, 0.01, 0.03} x width {8, 16, 32} x layers {2, 4} of the configurable CNN (24
points); every trial trains 3 epochs on 3,000 MNIST training images (20% held out for validation).
Grid runs all 24; random and TPE + median pruning run 8 each (a third of the trials), and TPE + pruning
also 12 (pruned trials are cheap). Reports the best validation accuracy and the total training seconds
of each, back to back on this machine (about 6 minutes).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from imgclf.config import load_config
from imgclf.tune import tune

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"model.name": "cnn", "train.lr": [0.001, 0.003, 0.01, 0.03], "model.options.width": [8, 16, 32],
         "model.options.layers": [2, 4]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()))
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "mnist"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = load_config(None, {"out": str(args.out), "data.dataset": "mnist", "data.data_dir": args.data_dir,
                                "data.subset": 3000, "data.val_fraction": 0.2, "data.augment": "none",
                                "train.epochs": 3, "train.batch_size": 64, "train.schedule": "constant",
                                "train.optimizer": "adam"})
    rows = []
    for name, sampler, pruner, trials in (("grid", "grid", "none", None), ("random", "random", "none", 8),
                                          ("tpe + median pruning", "tpe", "median", 8),
                                          ("tpe + median pruning, 12 trials", "tpe", "median", 12)):
        study = f"{sampler}-{pruner}-{trials or 'all'}"  # an existing study in --out is continued, not rerun
        rows.append((name, tune(config, SPACE, sampler=sampler, pruner=pruner, trials=trials, study=study)))
    grid_best, grid_seconds = rows[0][1]["best"]["value"], rows[0][1]["train_seconds"]
    print("| search | trials (pruned) | best val accuracy | vs grid (points) | training seconds | share of grid's |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['trials']} ({r['pruned']}) | {r['best']['value']:.4f} "
              f"| {(r['best']['value'] - grid_best) * 100:+.2f} | {r['train_seconds']:.0f} "
              f"| {r['train_seconds'] / grid_seconds:.0%} |")
    for name, r in rows:
        print(f"{name}: best {r['best']['params']}, test accuracy of its model {r['test']['accuracy']:.4f}")


if __name__ == "__main__":
    main()
