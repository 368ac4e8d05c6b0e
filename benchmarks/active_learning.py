"""Labelling what matters on MNIST: 500 labels chosen by least margin vs 500 chosen at random, added to a start of
1,000 labels; test accuracy after retraining, paired over seeds.

    nice -n 5 python benchmarks/active_learning.py --data-dir ../shared/datasets/mnist [--seeds 3] [--epochs 20]

Per seed: a stratified start of 1,000 training images and a pool of 10,000 other training images (both drawn by
the seed); mnist-fast trained from scratch on the start scores the pool; the 500 pool images with the least margin
(imgclf.active.least_margin, as `imgclf feedback queue` ranks) and 500 drawn at random get their true labels; each
arm trains from scratch, with the same settings and seed, on the start plus its 500 (data.extra, as `imgclf
retrain` adds feedback); both are scored on the 10,000 MNIST test images. The images travel as PNG folders, the
way exported feedback does.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.stats import ttest_rel
from sklearn.model_selection import train_test_split

from imgclf.active import least_margin
from imgclf.config import load_config
from imgclf.data import load_dataset
from imgclf.data.core import TensorSplit
from imgclf.evaluate.stats import format_p, mcnemar, mean_std
from imgclf.predict import predict_logits
from imgclf.rundir import preprocess_of
from imgclf.runtime import open_model
from imgclf.training import train


def write_folder(folder: Path, split: TensorSplit, indices: np.ndarray) -> Path:
    """The images at `indices` as folder/<label>/<index>.png."""
    for i in indices.tolist():
        (folder / str(int(split.labels[i]))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(split.images[i, 0].numpy()).save(folder / str(int(split.labels[i])) / f"{i}.png")
    return folder


def fit(out: Path, name: str, start: Path, extra: Path | None, epochs: float, seed: int) -> Path:
    """mnist-fast trained from scratch on the start folder (plus `extra`); returns its run directory."""
    overrides = {"out": str(out / "runs"), "name": name, "train.seed": seed, "data.dataset": f"folder:{start}",
                 "data.val_fraction": 0, "data.augment": "digits", "data.num_workers": 0, "data.in_memory": True,
                 "data.extra": str(extra) if extra else None, "model.name": "mnist-fast", "train.epochs": epochs,
                 "train.batch_size": 64}
    return train(load_config(None, overrides), progress=False).path


def probabilities(run: Path, split: TensorSplit) -> torch.Tensor:
    """(N, 10) class probabilities of a run's model (with its temperature) on a split."""
    model, meta = open_model(run)
    logits = torch.from_numpy(predict_logits(model, split, preprocess_of(meta), torch.device("cpu")))
    return torch.softmax(logits / meta.get("temperature", 1.0), dim=1)


def one_seed(seed: int, train_split: TensorSplit, test: TensorSplit, scratch: Path, args) -> dict:
    """The start model and both arms for one seed: their test accuracies and the McNemar test between the arms."""
    rng = np.random.default_rng(seed)
    labels = train_split.labels.numpy()
    start, rest = train_test_split(np.arange(len(labels)), train_size=args.start, stratify=labels, random_state=seed)
    pool = rng.choice(rest, args.pool, replace=False)
    folder = write_folder(scratch / f"start{seed}" / "train", train_split, start).parent
    first = fit(scratch, f"start{seed}", folder, None, args.epochs, seed)
    chosen = {"margin": pool[least_margin(probabilities(first, train_split.take(pool)), args.add).numpy()],
              "random": rng.choice(pool, args.add, replace=False)}
    right = {"start": probabilities(first, test).argmax(1) == test.labels}
    for arm, picked in chosen.items():
        extra = write_folder(scratch / f"{arm}{seed}", train_split, picked)
        right[arm] = probabilities(fit(scratch, f"{arm}{seed}", folder, extra, args.epochs, seed), test).argmax(
            1) == test.labels
    return {"accuracy": {k: float(v.float().mean()) for k, v in right.items()},
            "mcnemar": mcnemar(right["margin"].numpy(), right["random"].numpy())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="the MNIST IDX files")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--start", type=int, default=1000, help="labelled images to start from")
    parser.add_argument("--pool", type=int, default=10_000, help="unlabelled images to choose from")
    parser.add_argument("--add", type=int, default=500, help="labels added by each arm")
    parser.add_argument("--epochs", type=float, default=20, help="epochs of every training (both arms alike)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    mnist = load_dataset("mnist", args.data_dir, allow_download=False)
    began, results = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(args.seeds):
            results.append(one_seed(seed, mnist.splits["train"], mnist.splits["test"], Path(scratch), args))
            r = results[-1]
            print(f"seed {seed}: start {r['accuracy']['start']:.4f}, margin {r['accuracy']['margin']:.4f}, "
                  f"random {r['accuracy']['random']:.4f}", flush=True)
    print(f"\n| seed | start ({args.start}) | +{args.add} by least margin | +{args.add} at random | difference | "
          "McNemar p (margin vs random) |\n|---|---|---|---|---|---|")
    for seed, r in enumerate(results):
        a = r["accuracy"]
        print(f"| {seed} | {a['start']:.4f} | {a['margin']:.4f} | {a['random']:.4f} | {a['margin'] - a['random']:+.4f} "
              f"| {format_p(r['mcnemar']['p_value'])} |")
    arms = {k: [r["accuracy"][k] for r in results] for k in ("start", "margin", "random")}
    means = {k: mean_std(v) for k, v in arms.items()}
    difference = mean_std([m - r for m, r in zip(arms["margin"], arms["random"], strict=True)])
    paired = ttest_rel(arms["margin"], arms["random"]).pvalue if len(results) > 1 else float("nan")
    print("| mean ± sd | " + " | ".join(f"{means[k]['mean']:.4f} ± {means[k]['std']:.4f}"
                                       for k in ("start", "margin", "random")) +
          f" | {difference['mean']:+.4f} ± {difference['std']:.4f} | paired t-test over seeds: p = {paired:.3g} |")
    print(f"\n{args.seeds} seeds, {args.epochs:g} epochs per training, {time.perf_counter() - began:.0f} s in all")


if __name__ == "__main__":
    main()
