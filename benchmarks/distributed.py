"""Distributed training on this machine: training samples/s of 1 process vs 2 torchrun processes (gloo, CPU),
with the same recipe and global batch, and how far apart their final weights and test accuracies end up.

    python benchmarks/distributed.py --data-dir ../shared/datasets/mnist [--images 20000] [--epochs 1]

Every run is its own process, back to back: 1 process with 2 threads (the whole machine), 1 process with 1 thread
(what each of 2 processes gets), and torchrun --nproc_per_node=2 with 1 thread each. Samples/s counts optimizer
steps x global batch over the training seconds (no validation split, so no validation time in it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from imgclf.training import RunSummary

MODELS = {"mnist-fast": ["--config", "configs/mnist-fast.yaml"],
          "paper-cnn": ["--config", "configs/paper-cnn.yaml", "--train.schedule", "constant"]}
ROOT = Path(__file__).resolve().parents[1]


def run(name: str, recipe: list[str], processes: int, threads: int, args: argparse.Namespace, out: Path) -> dict:
    launcher = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "-m"]
                if processes > 1 else [sys.executable, "-m"])
    command = [*launcher, "imgclf", "train", *recipe, "-q", "--data-dir", str(args.data_dir), "--out", str(out),
               "--name", name, "--epochs", str(args.epochs), "--data.subset", str(args.images),
               "--data.val_fraction", "0", "--device", "cpu"]
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                   stdout=subprocess.DEVNULL)
    summary = RunSummary.read(out / name)
    config = (out / name / "config.yaml").read_text()
    batch = int(next(line.split(":")[1] for line in config.splitlines() if line.strip().startswith("batch_size")))
    return {"samples_per_s": summary.steps * batch / summary.train_seconds, "test_acc": summary.test_acc,
            "seconds": summary.train_seconds, "batch": batch}


def max_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max((x[k].float() - y[k].float()).abs().max().item() for k in x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "datasets" / "mnist")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--epochs", type=float, default=1.0)
    args = parser.parse_args()
    print("| model | global batch | 1 proc x 2 threads | 1 proc x 1 thread | 2 procs x 1 thread | "
          "2 procs / 1 proc x 2 | max weight diff | test acc 1 / 2 procs |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        for model, recipe in MODELS.items():
            whole = run(f"{model}-1x2", recipe, 1, 2, args, out)
            single = run(f"{model}-1x1", recipe, 1, 1, args, out)
            two = run(f"{model}-2x1", recipe, 2, 1, args, out)
            diff = max_difference(out / f"{model}-1x2", out / f"{model}-2x1")
            print(f"| {model} | {whole['batch']} | {whole['samples_per_s']:.0f} | {single['samples_per_s']:.0f} | "
                  f"{two['samples_per_s']:.0f} | {two['samples_per_s'] / whole['samples_per_s']:.2f}x | "
                  f"{diff:.2e} | {whole['test_acc']:.4f} / {two['test_acc']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
