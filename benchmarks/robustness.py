"""Robustness of a standard, a noise-augmented and an adversarially trained MNIST model, and the
explanation sanity checks, on real runs.

    python benchmarks/robustness.py [--out DIR] [--data-dir DIR] [--adv-epochs 5] [--limit 1000]

Trains mnist-fast three ways (about 25 minutes on 2 CPU cores, almost all of it PGD training), runs
`imgclf robustness` on each (15 corruptions x 5 severities, FGSM and PGD-40 at eps 0.05-0.3, on a
seeded sample of --limit test images) and prints markdown tables, attacks the adversarially
trained model again with PGD-100; then measures, on 500 test digits
of the standard run, how much of each explanation method's attribution lies on the strokes and how
much the maps change when the weights are re-initialized. Runs and reports stay in --out (finished ones are reused).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from imgclf.data import load_dataset
from imgclf.evaluate.robustness_report import RobustnessReport
from imgclf.explain import METHODS, attribute
from imgclf.models import create_model
from imgclf.rundir import load_model, preprocess_of
from imgclf.training import RunSummary

ROOT = Path(__file__).resolve().parents[1]
IMGCLF = str(Path(sys.executable).parent / "imgclf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()))
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--adv-epochs", default="5")
    parser.add_argument("--limit", default="1000")
    args = parser.parse_args()
    recipes = [("standard", ["--epochs", "2"]), ("noise-0.4", ["--epochs", "2", "--noise", "0.4"]),
               (f"pgd-0.3-{args.adv_epochs}ep", ["--adversarial", "pgd", "--eps", "0.3", "--epochs", args.adv_epochs])]
    for name, extra in recipes:
        if not (args.out / name / "model.json").is_file():
            subprocess.run([IMGCLF, "train", "--config", str(ROOT / "configs/mnist-fast.yaml"), "--out", str(args.out),
                            "--name", name, "--data-dir", args.data_dir, "-q", *extra], check=True,
                           stdout=subprocess.DEVNULL)
        if not (args.out / name / "robustness.json").is_file():
            subprocess.run([IMGCLF, "robustness", str(args.out / name), "--limit", args.limit, "-q"], check=True,
                           stdout=subprocess.DEVNULL)
    reports = {name: _read(args.out / name) for name, _ in recipes}
    _tables(reports, args.out)
    # Madry et al.'s attack on the adversarially trained model (100 steps of 0.01, here one random start):
    # masked gradients would show as a drop from PGD-40
    adversarial = recipes[-1][0]
    subprocess.run([IMGCLF, "robustness", str(args.out / adversarial), "--corruptions", "none", "--attacks", "pgd",
                    "--eps", "0.3", "--steps", "100", "--step-size", "0.01", "--limit", args.limit,
                    "--out", str(args.out / "pgd100"), "-q"], check=True, stdout=subprocess.DEVNULL)
    strong = _read(args.out / "pgd100").attacks["pgd"]
    print(f"\n{adversarial} under PGD-100 (step 0.01) at eps 0.3: {strong['0.3']:.4f}")
    _sanity(args.out / "standard", args.data_dir)


def _read(folder: Path) -> RobustnessReport:
    """The robustness.json in `folder`."""
    return RobustnessReport.from_json(json.loads((folder / "robustness.json").read_text()))


def _tables(reports: dict[str, RobustnessReport], out: Path) -> None:
    first = next(iter(reports.values()))
    eps = list(first.attacks["pgd"])
    print(f"{first.images:,} MNIST test images (seeded sample); PGD {first.attack_settings.steps} steps, "
          "step 2.5 eps / steps, random start\n")
    print("| run | training s | clean | mean corruption acc | " + " | ".join(f"FGSM {e}" for e in eps) + " | "
          + " | ".join(f"PGD {e}" for e in eps) + " |")
    print("|---" * (4 + 2 * len(eps)) + "|")
    for name, r in reports.items():
        seconds = RunSummary.read(out / name).train_seconds
        print(f"| {name} | {seconds:.0f} | {r.clean_accuracy:.4f} | {r.mean_corruption_accuracy:.4f} | "
              + " | ".join(f"{r.attacks['fgsm'][e]:.4f}" for e in eps) + " | "
              + " | ".join(f"{r.attacks['pgd'][e]:.4f}" for e in eps) + " |")
    print("\n| corruption (mean over 5 severities) | " + " | ".join(reports) + " |")
    print("|---" * (1 + len(reports)) + "|")
    for corruption in first.corruptions:
        print(f"| {corruption} | " + " | ".join(f"{r.corruptions[corruption].mean_accuracy:.4f}"
                                            for r in reports.values()) + " |")


def _sanity(run: Path, data_dir: str, n: int = 500) -> None:
    """Stroke concentration and the model randomization test for each explanation method."""
    model, meta = load_model(run)
    pre = preprocess_of(meta)
    images = load_dataset("mnist", Path(data_dir) / "mnist").splits["test"].images[:n]
    x = pre(images)
    near = F.max_pool2d((images.float() / 255 > 0.2).float(), 3, stride=1, padding=1)[:, 0] > 0
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    torch.manual_seed(1)
    random = create_model(meta["architecture"]["name"], 10, 1, 28).eval()
    baseline = pre.normalize(torch.zeros_like(x))
    area = float(near.float().mean())
    print(f"\n{n} test digits; strokes and the pixel around them cover {area:.1%} of the image\n")
    print("| method | share of attribution on strokes | per-pixel strokes / background | "
          "rank correlation with random weights | the same, stroke pixels only |")
    print("|---|---|---|---|---|")
    for method in METHODS:
        maps = attribute(model, x, predicted, method, baseline=baseline)
        shuffled = attribute(random, x, predicted, method, baseline=baseline)
        mass = float((maps * near).sum() / maps.sum())
        rho, rho_strokes = (_rank_correlation(maps, shuffled, mask) for mask in (torch.ones_like(near), near))
        ratio = f"{(mass / area) / ((1 - mass) / (1 - area)):.2f}" if mass < 1 else "all on strokes"
        print(f"| {method} | {mass:.3f} | {ratio} | {rho:.3f} | {rho_strokes:.3f} |")


def _rank_correlation(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean Spearman correlation of two sets of maps over the masked pixels of each image."""
    pairs = [(x[m], y[m]) for x, y, m in zip(a, b, mask, strict=True)]
    return float(np.mean([spearmanr(x, y).statistic for x, y in pairs if x.std() > 0 and y.std() > 0]))


if __name__ == "__main__":
    main()
