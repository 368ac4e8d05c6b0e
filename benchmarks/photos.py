"""Small photos on a 2-core CPU: the automatic recipe on cifar10-train-25k, against torchvision's resnet18 from
scratch with the same budget, and the decoded-image cache's start-up time.

    python benchmarks/photos.py [--data ../shared/datasets/cifar10-train-25k] [--skip-resnet]

1. Start-up (load the folder, statistics, decode train and validation images) in a fresh process with an empty
   cache, then again with the cache it left: seconds and the ratio.
2. `imgclf train --dataset folder:DATA --data.val_fraction 0.2 --data.test_fraction 0`: the recipe chosen from
   the data, timed from process launch; its validation accuracy after every epoch against the wall time, and
   the final model scored on validation with and without flip test-time augmentation.
3. resnet18 from scratch at 32x32, everything else as the recipe (optimizer, schedule, augmentation, bf16) but
   the learning rate (0.1), with as many epochs as fit the recipe's training time by the estimate `imgclf train`
   prints.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgclf.evaluate.evaluation import EvalReport

ROOT = Path(__file__).resolve().parents[1]
IMGCLF = str(Path(sys.executable).parent / "imgclf")
SPLIT = ["--data.val_fraction", "0.2", "--data.test_fraction", "0"]  # stratified 20% validation, no test split
RESNET_LR = 0.1  # the usual SGD rate for ResNets on CIFAR: resnet18 has no 1/8 logit scale, and diverged at 0.4


def startup(data: Path, cache: Path) -> tuple[float, float]:
    """Seconds a fresh process takes to have both splits decoded in memory: in all, and after its imports."""
    code = (f"import time\n"
            f"from imgclf.data import default_preprocess, load_dataset, to_memory, train_val\n"
            f"start = time.perf_counter()\n"
            f"d = load_dataset('folder:{data}', fractions={{'train': 0.8, 'val': 0.2, 'test': 0.0}})\n"
            f"pre = default_preprocess(d)\n"
            f"[to_memory(s, pre, 2) for s in train_val(d, None, 0.2)]\n"
            f"print(time.perf_counter() - start)\n")
    start = time.perf_counter()
    printed = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                             env={**os.environ, "IMGCLF_CACHE_DIR": str(cache)}).stdout
    return time.perf_counter() - start, float(printed)


def train(data: Path, out: Path, name: str, *extra: str) -> tuple[float, list[dict], str]:
    """Whole-process seconds, metrics.csv rows and the printed plan of one `imgclf train`."""
    command = [IMGCLF, "train", "--dataset", f"folder:{data}", *SPLIT, "--out", str(out), "--name", name, "-q",
               *extra]
    start = time.perf_counter()
    printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    seconds = time.perf_counter() - start
    with (out / name / "metrics.csv").open() as f:
        return seconds, list(csv.DictReader(f)), printed


def val_accuracy(run: Path, tta: bool) -> float:
    subprocess.run([IMGCLF, "evaluate", str(run), "--split", "val", "--resamples", "100", "--latency-runs", "5",
                    "-q", "--out", str(run / f"val{'-tta' if tta else ''}"), *(["--tta"] if tta else [])],
                   check=True, capture_output=True)
    return EvalReport.load(run / f"val{'-tta' if tta else ''}" / "report.json").accuracy


def curve(rows: list[dict]) -> str:
    return ", ".join(f"{float(r['seconds']):.0f}s {float(r['val_acc']):.3f}" for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "cifar10-train-25k")
    parser.add_argument("--skip-resnet", action="store_true", help="only the cache and the recipe")
    parser.add_argument("--keep", type=Path, help="an empty folder to keep the runs and the cache in (e.g. to pass "
                                                  "RUN/recipe/model.safetensors to benchmarks/transfer.py --weights)")
    args = parser.parse_args()
    data = args.data.resolve()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        cache = Path(tmp) / "cache"
        (cold, cold_data), (warm, warm_data) = startup(data, cache), startup(data, cache)
        print(f"start-up (scan, statistics, decode 25,000 JPEGs): {cold_data:.2f}s with an empty cache, "
              f"{warm_data:.2f}s with it: {cold_data / warm_data:.1f}x faster; whole process (imports included) "
              f"{cold:.1f}s and {warm:.1f}s: {cold / warm:.1f}x")
        os.environ["IMGCLF_CACHE_DIR"] = str(cache)  # the runs below start from the decoded images, as a user's would
        out = Path(tmp) / "runs"
        seconds, rows, printed = train(data, out, "recipe")
        print(f"\nimgclf train --dataset folder:{data.name} {' '.join(SPLIT)}\n{printed}")
        trained = float(rows[-1]["seconds"])
        plain, tta = val_accuracy(out / "recipe", False), val_accuracy(out / "recipe", True)
        print(f"recipe: {seconds:.0f}s whole process ({trained:.0f}s training), val_acc {plain:.4f}, with flip TTA "
              f"{tta:.4f}\n  curve: {curve(rows)}")
        if args.skip_resnet:
            return
        from imgclf.config import load_config
        from imgclf.data import augment_preset
        from imgclf.training import RunSummary
        from imgclf.training.recipe import estimate

        recipe = load_config(out / "recipe" / "config.yaml")
        probe = load_config(out / "recipe" / "config.yaml", {"model.name": "resnet18", "model.options": {},
                                                              "train.lr": RESNET_LR})
        summary = RunSummary.read(out / "recipe")
        per_epoch = estimate(probe, 10, 3, summary.train_images, summary.val_images,
                             augment_preset(recipe.data.augment))[1]
        epochs = max(1, int(trained / per_epoch))
        r_seconds, r_rows, _ = train(data, out, "resnet18", "--config", str(out / "recipe" / "config.yaml"),
                                     "--model", "resnet18", "--model.options", "{}", "--epochs", str(epochs),
                                     "--train.lr", str(RESNET_LR))
        r_plain, r_tta = val_accuracy(out / "resnet18", False), val_accuracy(out / "resnet18", True)
        print(f"resnet18 from scratch at 32px, {epochs} epochs (estimated {per_epoch:.0f}s each): {r_seconds:.0f}s "
              f"whole process, val_acc {r_plain:.4f}, with flip TTA {r_tta:.4f}\n  curve: {curve(r_rows)}")
        print(f"\n| model | epochs | whole process | val acc | with flip TTA |\n|---|---|---|---|---|\n"
              f"| {recipe.model.name} (auto) | {recipe.train.epochs:g} | {seconds:.0f}s | {plain:.4f} | {tta:.4f} |\n"
              f"| resnet18 | {epochs} | {r_seconds:.0f}s | {r_plain:.4f} | {r_tta:.4f} |")


if __name__ == "__main__":
    main()
