"""Accuracy and time of one training recipe, timed as a whole process, with its per-epoch table.

    python benchmarks/recipe_accuracy.py configs/mnist-best.yaml   # the best-MNIST figure
    python benchmarks/recipe_accuracy.py configs/paper-cnn.yaml    # the paper-CNN figure

Extra arguments go to `imgclf train` (e.g. --epochs 2). The data come from --data-dir, default
../shared/datasets beside the repository.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgclf.training import RunSummary

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    extra = sys.argv[2:]
    if "--data-dir" not in extra:
        extra += ["--data-dir", str(ROOT.parent / "shared" / "datasets")]
    out = Path(tempfile.mkdtemp())
    command = [str(Path(sys.executable).parent / "imgclf"), "train", "--config", sys.argv[1], "--out", str(out),
               "--name", "run", "-q", *extra]
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    rows = list(csv.DictReader((out / "run" / "metrics.csv").open()))
    summary = RunSummary.read(out / "run")
    columns = [c for c in ("epoch", "train_acc", "val_acc", "lr", "seconds") if c in rows[0]]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{float(row[c]):.4g}" for c in columns) + " |")
    print(f"\n{sys.argv[1]}: test accuracy {summary.test_acc:.4f} (saved model; best {summary.best}), "
          f"{seconds:.1f} s whole process, {summary.train_seconds:.1f} s training")


if __name__ == "__main__":
    main()
