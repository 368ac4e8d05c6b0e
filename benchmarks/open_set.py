"""Unknown inputs and calibration on digits and photos: how well each score tells a run's held-out images from
images of none of its classes, the share rejected, the calibration error, and what fitting them costs.

    python benchmarks/open_set.py [--out DIR] [--data-dir DIR] [--runs mnist cifar hymenoptera] [--seeds 0 1 2]
                                  [--outlier-exposure 0.5] [--limit 1000]

Trains one run per kind and seed (finished runs in --out are reused): `mnist`, configs/mnist-fast.yaml with a
10% validation split; `cifar`, the automatic recipe on cifar10-train-25k (its 80/10/10 split); `hymenoptera`,
the automatic recipe on its train/ and val/ folders; `--outlier-exposure W` trains them with that weight of
outlier exposure instead. Then fits the detector again (timed, against the run's training time; the validation
images' features are computed first, as training has them from its last validation pass), scores the
held-out images (the test split; hymenoptera has none, so its val/ images, which also set the threshold) and
the strangers: generated noise and flat images, the held-out images inverted, and real images of other kinds.
Prints, per kind, a markdown table of AUROC (mean, spread and lowest over seeds) per score and the share of
each set the default score answers unknown at the threshold rejecting 5% of validation images.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from imgclf import openset
from imgclf.data import Split, TensorSplit, in_memory, load_dataset
from imgclf.evaluate import metrics
from imgclf.evaluate.evaluation import eval_data, ood_images, open_run, own_split
from imgclf.rundir import preprocess_of

ROOT = Path(__file__).resolve().parents[1]
IMGCLF = str(Path(sys.executable).parent / "imgclf")
CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()))
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--runs", nargs="+", default=["mnist", "cifar", "hymenoptera"],
                        choices=["mnist", "cifar", "hymenoptera"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--outlier-exposure", type=float, default=0.0)
    parser.add_argument("--limit", type=int, default=1000, help="images per stranger set")
    args = parser.parse_args()
    os.environ["IMGCLF_DATA_DIR"] = str(args.data_dir)  # where ood_images finds MNIST
    for kind in args.runs:
        found = [_measure(args, kind, seed) for seed in args.seeds]
        _table(kind, args, found)


def _train(args: argparse.Namespace, kind: str, seed: int) -> Path:
    run = args.out / f"{kind}{'-oe' if args.outlier_exposure else ''}-s{seed}"
    if (run / "summary.json").is_file():
        return run
    data = {"mnist": ["--config", str(ROOT / "configs/mnist-fast.yaml"), "--data.val_fraction", "0.1"],
            "cifar": ["--dataset", f"folder:{args.data_dir / 'cifar10-train-25k'}"],
            "hymenoptera": ["--dataset", f"folder:{args.data_dir / 'hymenoptera'}"]}[kind]
    subprocess.run([IMGCLF, "train", *data, "--out", str(args.out), "--name", run.name, "--data-dir",
                    str(args.data_dir), "--train.seed", str(seed), "--train.outlier_exposure",
                    str(args.outlier_exposure), "-q"], check=True, stdout=subprocess.DEVNULL)
    return run


def _measure(args: argparse.Namespace, kind: str, seed: int) -> dict:
    """One run's figures: AUROC and share rejected per set and score, accuracy, calibration, fitting cost."""
    run = _train(args, kind, seed)
    opened = open_run(run)
    model, meta, pre = opened.model.eval(), opened.meta, preprocess_of(opened.meta)
    train = in_memory(own_split(opened, "train").split, pre, True)
    val = in_memory(own_split(opened, "val").split, pre, True)
    held = val if kind == "hymenoptera" else in_memory(
        load_dataset("mnist", args.data_dir / "mnist").split("test") if kind == "mnist"
        else eval_data(run, meta, split="test").split, pre, True)
    embedded = openset.embed(model, val, pre, CPU)  # training has these from its validation pass
    started = time.perf_counter()
    fitted = openset.fit(model, train, val, pre, CPU, model_sha256=meta["sha256"], seed=seed, val_embedded=embedded)
    fit_seconds = time.perf_counter() - started
    features, logits = openset.embed(model, held, pre, CPU)
    known = {m: s.numpy() for m, s in fitted.scores(logits, features).items()}
    correct = (logits.argmax(1) == held.labels).numpy()
    rejected = known[fitted.method] > fitted.threshold()
    summary = json.loads((run / "summary.json").read_text())
    ece = {"before": metrics.calibration(metrics.softmax(logits.numpy()), held.labels.numpy())["ece"],
           "after": metrics.calibration(metrics.softmax(logits.numpy(), fitted.temperature),
                                        held.labels.numpy())["ece"]}
    if held is val:  # no held-out images: the temperature fitted on one half of val, scored on the other
        ece["after"] = _cross_fitted_ece(logits.numpy(), held.labels.numpy(), seed)
    sets = {}
    for name, images in _strangers(args, kind, held, pre, seed).items():
        scores = openset.score_split(model, images, pre, CPU, fitted)
        sets[name] = {m: {"auroc": openset.separation(known[m], scores[m])["auroc"],
                          "rejected": float((scores[m] > fitted.threshold(method=m)).mean())} for m in openset.METHODS}
    return {"accuracy": float(correct.mean()), "rejected": float(rejected.mean()),
            "accepted_accuracy": float(correct[~rejected].mean()), "ece": ece, "check": fitted.check,
            "fit_seconds": fit_seconds, "train_seconds": summary["train_seconds"], "sets": sets}


def _cross_fitted_ece(logits: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """Expected calibration error of a temperature fitted on one half of the images, scored on the other
    half, and the other way round (the mean of both)."""
    order = np.random.default_rng(seed).permutation(len(labels))
    halves = order[: len(order) // 2], order[len(order) // 2:]
    found = []
    for fit_on, score_on in (halves, halves[::-1]):
        t = metrics.fit_temperature(logits[fit_on], labels[fit_on])
        found.append(metrics.calibration(metrics.softmax(logits[score_on], t), labels[score_on])["ece"])
    return float(np.mean(found))


def _strangers(args: argparse.Namespace, kind: str, held: Split, pre, seed: int) -> dict[str, TensorSplit]:
    """Images of none of the run's classes, at its input size: generated ones, the held-out images inverted,
    and real images of other kinds."""
    n, data = args.limit, args.data_dir
    sets = {name: images.contiguous() for name, images in
            openset.generated(pre.channels, pre.size, n, seed + 1000).items()}  # not the self-check's images
    sets["inverted held-out images"] = 255 - held.images[:n]
    found = {name: TensorSplit(images, torch.zeros(len(images), dtype=torch.int64)) for name, images in sets.items()}
    if kind == "mnist":
        found["CIFAR-10 photos, gray"] = ood_images(f"folder:{data / 'cifar10-train-25k'}", pre, n, seed)
        found["hymenoptera photos, gray"] = ood_images(f"folder:{data / 'hymenoptera'}", pre, n, seed)
        found["letters A-Z (PIL's font)"] = TensorSplit(_letters(n, pre.size[0], seed),
                                                        torch.zeros(n, dtype=torch.int64))
    else:
        found["MNIST digits, RGB"] = ood_images("mnist", pre, n, seed)
        other = "cifar10-train-25k" if kind == "hymenoptera" else "hymenoptera"
        found[f"{other} photos"] = ood_images(f"folder:{data / other}", pre, n, seed)
    return found


def _letters(count: int, size: int, seed: int) -> torch.Tensor:
    """(count, 1, size, size) uint8 capital letters, white on black like MNIST, in PIL's own font at random
    sizes and small shifts."""
    rng = np.random.default_rng(seed)
    out = np.zeros((count, 1, size, size), np.uint8)
    for i in range(count):
        image = Image.new("L", (size, size))
        font = ImageFont.load_default(size=int(rng.integers(size // 2, size - 4)))
        offset = rng.integers(-2, 3, size=2)
        ImageDraw.Draw(image).text((size / 2 + offset[0], size / 2 + offset[1]), chr(65 + rng.integers(26)),
                                   fill=255, font=font, anchor="mm")
        out[i, 0] = np.asarray(image)
    return torch.from_numpy(out)


def _table(kind: str, args: argparse.Namespace, found: list[dict]) -> None:
    def stat(values: list[float], form: str = ".3f") -> str:
        return f"{np.mean(values):{form}} ± {np.std(values):{form}} (min {np.min(values):{form}})"

    oe = f", outlier exposure {args.outlier_exposure}" if args.outlier_exposure else ""
    print(f"\n### {kind}{oe}: {len(found)} seed(s)\n")
    print(f"held-out accuracy {stat([f['accuracy'] for f in found], '.4f')}; the default score rejects "
          f"{stat([f['rejected'] for f in found])} of them, accuracy on the rest "
          f"{stat([f['accepted_accuracy'] for f in found], '.4f')}")
    print(f"ECE on held-out images: uncalibrated {stat([f['ece']['before'] for f in found], '.4f')}, calibrated "
          f"{stat([f['ece']['after'] for f in found], '.4f')}")
    print(f"fitting detector and temperature: {stat([f['fit_seconds'] for f in found], '.2f')} s, "
          f"{stat([f['fit_seconds'] / f['train_seconds'] for f in found], '.1%')} of the training time "
          f"({stat([f['train_seconds'] for f in found], '.1f')} s)")
    print("self-check (combined): " + "; ".join(
        f"{k} {stat([f['check'][k] for f in found])}" for k in found[0]["check"]) + "\n")
    print("| images | " + " | ".join(openset.METHODS) + " | rejected (combined) |")
    print("|---|" + "---|" * (len(openset.METHODS) + 1))
    for name in found[0]["sets"]:
        cells = [stat([f["sets"][name][m]["auroc"] for f in found]) for m in openset.METHODS]
        share = np.mean([f["sets"][name]["combined"]["rejected"] for f in found])
        print(f"| {name} | " + " | ".join(cells) + f" | {share:.1%} |")


if __name__ == "__main__":
    main()
