"""Headline numbers of `imgclf evaluate --calibrate` and `imgclf compare` on real MNIST runs.

    python benchmarks/evaluation_report.py [--out DIR] [--data-dir DIR]

Trains four short recipes (about 8 minutes on 2 CPU cores), evaluates each with temperature
scaling fitted on its validation split, compares them on the 10,000 test images, and prints one
markdown table per step. The runs and reports stay in --out (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from imgclf.evaluate.compare import Comparison
from imgclf.evaluate.evaluation import EvalReport

ROOT = Path(__file__).resolve().parents[1]
IMGCLF = str(Path(sys.executable).parent / "imgclf")
RECIPES = [  # (run name, config, extra train arguments); 10% kept for validation, to fit the temperature on
    ("fast-seed0", "configs/mnist-fast.yaml", ["--data.val_fraction", "0.1"]),
    ("fast-seed1", "configs/mnist-fast.yaml", ["--data.val_fraction", "0.1", "--train.seed", "1"]),
    ("paper-3ep", "configs/paper-cnn.yaml", ["--epochs", "3"]),
    ("best-2ep", "configs/mnist-best.yaml", ["--data.val_fraction", "0.1", "--epochs", "2"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()))
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    args = parser.parse_args()
    for name, config, extra in RECIPES:
        if not (args.out / name / "model.json").is_file():
            subprocess.run([IMGCLF, "train", "--config", str(ROOT / config), "--out", str(args.out), "--name", name,
                            "--data-dir", args.data_dir, "-q", *extra], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([IMGCLF, "evaluate", str(args.out / name), "--calibrate", "-q"], check=True,
                       stdout=subprocess.DEVNULL)
    print("| run | accuracy [95% CI] | macro-F1 [95% CI] | ECE before -> after | temperature "
          "| worst class | p50 / p99 latency (ms) | images/s at batch 256 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, _, _ in RECIPES:
        r = EvalReport.load(args.out / name / "report.json")
        ci, lat, fair = r.confidence_intervals, r.efficiency["latency_ms"], r.fairness
        print(f"| {name} | {_ci(r.accuracy, ci['accuracy'])} | {_ci(r.macro['f1'], ci['macro_f1'])} "
              f"| {r.temperature['ece_uncalibrated']:.4f} -> {r.calibration['ece']:.4f} "
              f"| {r.temperature['value']:.3f} | {fair['worst_class']}: {fair['worst_accuracy']:.4f} "
              f"| {lat['p50']:.2f} / {lat['p99']:.2f} | {r.efficiency['throughput']['images_per_second']:,.0f} |")
    subprocess.run([IMGCLF, "compare", *(str(args.out / n) for n, _, _ in RECIPES), "--out", str(args.out), "-q"],
                   check=True, stdout=subprocess.DEVNULL)
    result = Comparison.load(args.out / "compare.json")
    print(f"\n| rank | run | accuracy | McNemar p vs best ({result.best}) | best right only / this right only |")
    print("|---|---|---|---|---|")
    for rank, e in enumerate(result.leaderboard, 1):
        versus = e.vs_best or {}
        p = f"{versus['p_value']:.3g}" if versus else "best"
        print(f"| {rank} | {e.name} | {e.accuracy:.4f} | {p} "
              f"| {versus.get('a_only', '')} / {versus.get('b_only', '')} |")
    print(f"\nreports: {args.out}/<run>/report.html and {args.out}/compare.html")


def _ci(value: float, interval: list[float]) -> str:
    return f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"


if __name__ == "__main__":
    main()
