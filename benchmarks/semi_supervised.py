"""Semi-supervised training on MNIST: a few labels plus unlabelled images (FixMatch-style) vs the labels alone.

    python benchmarks/semi_supervised.py [--labels 100 1000] [--seeds 0 1 2] [--time 75s] [--ratio 3]

For each number of labels and seed: that many MNIST training images, stratified (labels / 10 per class, chosen
by the seed), written as a <class>/ folder; one run on them alone and one with data.unlabelled set to all
60,000 MNIST training images (written once as PNGs, folder names meaningless; the labelled ones are among them,
as in FixMatch's own setup). Both runs of a pair share everything else, including the wall-time budget
train.time: the semi-supervised run spends it on fewer, larger steps. Both keep their final weights (no
validation split: labels are scarce) and are scored on the 10,000 MNIST test images. The difference is tested
with a paired t-test over the seeds. Runs use one torch thread by default (see --threads).
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

from imgclf.config import load_config
from imgclf.data import load_dataset
from imgclf.evaluate.stats import format_p, mean_std
from imgclf.predict import predict_logits
from imgclf.rundir import load_model, preprocess_of
from imgclf.training import train

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
# images per epoch at least: a run checkpoints at every epoch's end, which would take a third of a short budget if
# an epoch were 100 images; repeating the labelled images (as FixMatch's loader does) changes no sampling odds
EPOCH = 1000


def write_pngs(images: torch.Tensor, folder: Path, names: list[str]) -> None:
    """uint8 (N, 1, 28, 28) images as folder/<name>.png, in subfolders as `names` say."""
    for image, name in zip(images, names, strict=True):
        path = folder / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(path)


def labelled_folder(out: Path, train_split, labels: int, seed: int) -> Path:
    """labels / 10 training images per class, chosen by `seed`, as <class>/<index>-<copy>.png, each written
    EPOCH // labels times (at least once)."""
    rng = np.random.default_rng(seed)
    targets = train_split.labels.numpy()
    picked = np.concatenate([rng.choice(np.flatnonzero(targets == c), labels // 10, replace=False) for c in range(10)])
    copies = np.repeat(picked, max(1, EPOCH // labels))
    folder = out / f"labelled-{labels}-seed{seed}"
    write_pngs(train_split.images[copies], folder, [f"{targets[i]}/{i}-{k}" for k, i in enumerate(copies)])
    return folder


def test_accuracy(run: Path, test_split) -> float:
    """The run's saved model scored on the MNIST test images."""
    model, meta = load_model(run)
    logits = predict_logits(model, test_split, preprocess_of(meta), torch.device("cpu"))
    return float((logits.argmax(1) == test_split.labels.numpy()).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--time", default="75s", help="train.time of every run")
    parser.add_argument("--ratio", type=int, default=3, help="train.unlabelled_ratio (FixMatch's mu)")
    parser.add_argument("--threshold", type=float, default=0.95, help="train.pseudo_threshold")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a 2-core machine shared with other work, 2 threads contend and "
                             "a step took 10x longer)")
    parser.add_argument("--out", type=Path, help="where the images and runs go (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    out = args.out or Path(tempfile.mkdtemp(prefix="semi-"))
    mnist = load_dataset("mnist", DATA / "mnist", allow_download=False)
    train_split, test_split = mnist.splits["train"], mnist.splits["test"]
    unlabelled = out / "unlabelled"
    if not unlabelled.is_dir():
        write_pngs(train_split.images, unlabelled, [f"{i // 1000:02d}/{i}" for i in range(len(train_split))])
    settings = {"out": str(out / "runs"), "data.val_fraction": 0, "data.test_fraction": 0, "data.augment": "digits",
                "data.num_workers": 0, "model.name": "mnist-fast", "train.epochs": 100_000, "train.time": args.time,
                "train.schedule": "constant", "train.lr": 0.003, "train.ema": 0.99,
                "train.unlabelled_ratio": args.ratio, "train.pseudo_threshold": args.threshold}
    results: dict[tuple[int, str], list[float]] = {}
    steps: dict[tuple[int, str], list[int]] = {}
    for labels in args.labels:
        for seed in args.seeds:
            folder = labelled_folder(out, train_split, labels, seed)
            for arm, extra in (("labels only", {}), ("+ unlabelled", {"data.unlabelled": str(unlabelled)})):
                name = f"{labels}-{seed}-{'semi' if extra else 'sup'}"
                config = load_config(None, {**settings, **extra, "name": name, "data.dataset": f"folder:{folder}",
                                            "train.batch_size": min(64, labels // 2), "train.seed": seed})
                run = train(config, progress=False, test=False)
                results.setdefault((labels, arm), []).append(test_accuracy(run.path, test_split))
                steps.setdefault((labels, arm), []).append(run.summary.steps)
                print(f"{labels} labels, seed {seed}, {arm}: test accuracy {results[labels, arm][-1]:.4f} after "
                      f"{run.summary.steps} steps"
                      + (f", pseudo_rate {run.history[-1]['pseudo_rate']:.3f}" if extra and run.history else ""),
                      flush=True)
    print(f"\nmnist-fast, train.time {args.time} per run, adamw lr 0.003 constant, EMA 0.99, digits augmentation, "
          f"unlabelled_ratio {args.ratio}, pseudo_threshold {args.threshold}, {args.threads} threads\n")
    print("| labels | arm | test accuracy (mean ± std) | per seed | steps (mean) |\n|---|---|---|---|---|")
    for (labels, arm), values in results.items():
        spread = mean_std(values)
        print(f"| {labels} | {arm} | {spread['mean']:.4f} ± {spread['std']:.4f} | "
              f"{', '.join(f'{v:.4f}' for v in values)} | {np.mean(steps[labels, arm]):.0f} |")
    print()
    for labels in args.labels:
        semi, sup = results[labels, "+ unlabelled"], results[labels, "labels only"]
        gain = mean_std([a - b for a, b in zip(semi, sup, strict=True)])
        p = format_p(ttest_rel(semi, sup).pvalue) if len(semi) > 1 else "n/a (one seed)"
        print(f"{labels} labels: unlabelled images add {gain['mean']:+.4f} ± {gain['std']:.4f} test accuracy; "
              f"paired t-test over {len(semi)} seeds p = {p}")
    print(f"\n{time.monotonic() - started:.0f} s in all; images and runs in {out}")


if __name__ == "__main__":
    main()
