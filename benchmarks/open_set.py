"""Unknown-input rejection: how well each score tells MNIST test digits from images of none of its classes.

    python benchmarks/open_set.py [--out DIR] [--data-dir DIR] [--seeds 0 1 2] [--limit 2000]

Trains mnist-fast (configs/mnist-fast.yaml with a 10% validation split, which sets the thresholds) once per
seed, then scores the 10,000 MNIST test digits against: CIFAR-10 photos and the hymenoptera photos (made gray
28x28 by the model's preprocessing), uniform and Gaussian noise, and the test digits inverted. Prints a markdown
table of AUROC and FPR at 95% TPR per score (the temperature-scaled maximum softmax probability baseline, the
energy score, the relative Mahalanobis distance), mean over seeds, and the share of each set each score answers
unknown at its threshold (the one rejecting 5% of validation images). Runs stay in --out (finished ones are reused).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from imgclf import openset
from imgclf.data import Preprocess, TensorSplit, load_dataset
from imgclf.evaluate.evaluation import ood_images
from imgclf.rundir import load_model, preprocess_of

ROOT = Path(__file__).resolve().parents[1]
IMGCLF = str(Path(sys.executable).parent / "imgclf")
CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()))
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--limit", type=int, default=2000, help="images per out-of-distribution set")
    args = parser.parse_args()
    test = load_dataset("mnist", Path(args.data_dir) / "mnist").split("test")
    rows: dict[str, list[dict]] = {}
    for seed in args.seeds:
        run = _train(args, seed)
        model, meta = load_model(run)
        fitted, pre = openset.load(run, meta), preprocess_of(meta)
        known = openset.score_split(model, test, pre, CPU, fitted)
        thresholds = {m: fitted.threshold(method=m) for m in openset.METHODS}
        rows.setdefault("MNIST test digits (in-distribution)", []).append(
            {m: {"rejected": float((known[m] > thresholds[m]).mean())} for m in openset.METHODS})
        for name, images in _strangers(args, test, seed, pre).items():
            scores = openset.score_split(model, images, pre, CPU, fitted)
            rows.setdefault(name, []).append(
                {m: {**openset.separation(known[m], scores[m]), "rejected": float((scores[m] > thresholds[m]).mean())}
                 for m in openset.METHODS})
    _table(rows, len(args.seeds))


def _train(args: argparse.Namespace, seed: int) -> Path:
    run = args.out / f"mnist-fast-seed{seed}"
    if not (run / openset.FILE).is_file():
        subprocess.run([IMGCLF, "train", "--config", str(ROOT / "configs/mnist-fast.yaml"), "--out", str(args.out),
                        "--name", run.name, "--data-dir", args.data_dir, "--data.val_fraction", "0.1",
                        "--train.seed", str(seed), "-q"], check=True, stdout=subprocess.DEVNULL)
    return run


def _strangers(args: argparse.Namespace, test: TensorSplit, seed: int, preprocess: Preprocess
               ) -> dict[str, TensorSplit]:
    """The out-of-distribution sets, `args.limit` images each (hymenoptera has fewer), as uint8 28x28."""
    g, n = torch.Generator().manual_seed(seed), args.limit
    shape = (n, 1, 28, 28)
    zeros = torch.zeros(n, dtype=torch.int64)
    data = Path(args.data_dir)
    return {
        "CIFAR-10 photos, gray 28x28": ood_images(f"folder:{data / 'cifar10-train-25k'}", preprocess, n, seed),
        "hymenoptera photos, gray 28x28": ood_images(f"folder:{data / 'hymenoptera'}", preprocess, n, seed),
        "uniform noise": TensorSplit((torch.rand(shape, generator=g) * 256).to(torch.uint8), zeros),
        "Gaussian noise (mean 128, std 64)": TensorSplit(
            (torch.randn(shape, generator=g) * 64 + 128).round().clamp(0, 255).to(torch.uint8), zeros),
        "inverted test digits": TensorSplit(255 - test.images[:n], zeros),
    }


def _table(rows: dict[str, list[dict]], seeds: int) -> None:
    print(f"AUROC / FPR at 95% TPR / share answered unknown at the threshold rejecting 5% of validation images, "
          f"mean over {seeds} seed(s)\n")
    print("| images | MSP (temperature) | energy | relative Mahalanobis |")
    print("|---|---|---|---|")
    for name, found in rows.items():
        cells = [" / ".join(f"{np.mean([f[m][key] for f in found]):{form}}" for key, form in
                            (("auroc", ".4f"), ("fpr95", ".3f"), ("rejected", ".1%")) if key in found[0][m])
                 for m in ("msp", "energy", "mahalanobis")]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
