"""Transfer learning offline: hymenoptera (ants vs bees) from a backbone pretrained here vs from scratch.

    python benchmarks/transfer.py [--model photo-fast|resnet18] [--weights FILE] [--epochs 20] [--seed 0]

(i) the backbone trained from scratch on ../shared/datasets/cifar10-train-25k at 32px (CIFAR's own size):
photo-fast by the automatic recipe (`imgclf train --dataset folder:cifar10-train-25k`), whose model.safetensors
is the file passed on; or resnet18 (4 epochs), its body saved as a torchvision-style state dict (.pth);
(ii) the model fine-tuned on hymenoptera/train from that file (--model.weights) at --size (64: photos shrunk to
32px keep too little of an ant), the head alone for --freeze-epochs, then everything, the body at lr x
--backbone-lr; (iii) the same recipe from scratch (nothing frozen, one lr: freezing random weights gains
nothing), same epochs, size and seed; (iv) both scored on hymenoptera/val (153 images) with McNemar's exact test
on the paired right/wrong outcomes.

Both runs train on a view of hymenoptera that holds only train/, so no epoch is picked on val/: the final
weights are scored and val/ stays held out. --weights FILE skips (i) and fine-tunes from FILE.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from imgclf.config import load_config
from imgclf.evaluate.compare import compare_runs
from imgclf.evaluate.evaluation import ScoreOn
from imgclf.evaluate.stats import format_interval, format_p
from imgclf.training import RunSummary, train
from imgclf.training.recipe import photo_fast_recipe

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def run(out: Path, name: str, settings: dict) -> tuple[Path, RunSummary, float]:
    """One training run: its folder, summary and wall seconds (data loading included)."""
    started = time.monotonic()
    result = train(load_config(None, {"out": str(out), "name": name, **settings}), progress=False)
    return result.path, result.summary, time.monotonic() - started


def pretrain(out: Path, model: str) -> tuple[Path, str]:
    """The backbone trained from scratch on CIFAR-10 at 32px, and the weights file a user would pass on."""
    cifar = {"data.dataset": f"folder:{DATA / 'cifar10-train-25k'}", "data.val_fraction": 0.2,
             "data.test_fraction": 0.0}
    if model == "photo-fast":  # the automatic recipe: photo-fast at 32px
        folder, summary, seconds = run(out, "cifar", cifar)
        path = folder / "model.safetensors"  # an imgclf run's weights: the body is taken, the head left
    else:
        folder, summary, seconds = run(out, "cifar", {**cifar, "data.image_size": 32, "data.augment": "light",
                                                      "model.name": model, "train.epochs": 4,
                                                      "train.batch_size": 128, "train.lr": 0.004})
        path = out / f"cifar-{model}.pth"
        state = load_file(folder / "model.safetensors")
        torch.save({k.removeprefix("body."): v for k, v in state.items() if k.startswith("body.")}, path)
    return path, (f"{model} pretrained on CIFAR-10 (20,000 images, {summary.epochs:g} epochs, 32px): validation "
                  f"accuracy {summary.best.value:.4f}, {seconds:.0f} s")


def train_only_view(out: Path) -> Path:
    """hymenoptera without val/: a run on it keeps its final weights rather than its best epoch on val/."""
    view = out / "hymenoptera-train"
    view.mkdir()
    (view / "train").symlink_to(DATA / "hymenoptera" / "train", target_is_directory=True)
    return view


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="photo-fast", choices=["photo-fast", "resnet18"])
    parser.add_argument("--weights", type=Path, help="a weights file of --model to fine-tune from, instead of (i)")
    parser.add_argument("--size", type=int, default=64, help="hymenoptera image size (both runs)")
    parser.add_argument("--epochs", type=float, default=20)
    parser.add_argument("--freeze-epochs", type=int, default=3)
    parser.add_argument("--backbone-lr", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=0.003, help="adamw's lr (resnet18; photo-fast: its recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2: the whole reference machine)")
    parser.add_argument("--out", type=Path, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    out = args.out or Path(tempfile.mkdtemp(prefix="transfer-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.weights:
        weights, origin = args.weights, f"fine-tuned from {args.weights}"
    else:
        weights, origin = pretrain(out, args.model)
    recipe = {"data.dataset": f"folder:{train_only_view(out)}", "data.val_fraction": 0, "data.image_size": args.size,
              "model.name": args.model, "train.epochs": args.epochs, "train.batch_size": 32, "train.lr": args.lr,
              "train.seed": args.seed}
    if args.model == "photo-fast":  # the automatic recipe's settings for 245 photos; epochs, size, seed as given
        fast = photo_fast_recipe(245, args.size, "auto")
        recipe = {**fast, **recipe, "train.lr": fast["train.lr"]}
    runs = {"pretrained": {"model.weights": str(weights), "train.freeze_epochs": args.freeze_epochs,
                           "train.backbone_lr": args.backbone_lr},
            "scratch": {"train.freeze_epochs": 0, "train.backbone_lr": 1.0}}
    seconds = {name: run(out, name, {**recipe, **changes})[2] for name, changes in runs.items()}
    result, _ = compare_runs([out / name for name in runs], ScoreOn(source=f"folder:{DATA / 'hymenoptera'}",
                                                                    split="val"),
                             latency_runs=5, out=out, pairs=[("pretrained", "scratch")])
    print(f"{origin}\nhymenoptera: {args.model} at {args.size}px, {args.epochs:g} epochs, lr {recipe['train.lr']:g}, "
          f"seed {args.seed}; pretrained: head only for {args.freeze_epochs} epochs, then body lr x "
          f"{args.backbone_lr:g}\n")
    print("| start | val accuracy [95% CI] | training s |\n|---|---|---|")
    for name in runs:
        entry = result.entry(name)
        print(f"| {name} | {format_interval(entry.accuracy, entry.ci['accuracy'])} | {seconds[name]:.0f} |")
    pair = result.pairs[0]
    print(f"\ndifference {result.entry('pretrained').accuracy - result.entry('scratch').accuracy:+.4f} on "
          f"{result.samples} val images; McNemar exact p = {format_p(pair['p_value'])} (pretrained right only "
          f"{pair['a_only']}, scratch right only {pair['b_only']}); {time.monotonic() - started:.0f} s in all, "
          f"{args.threads} threads; runs in {out}")


if __name__ == "__main__":
    main()
