"""Close the feedback loop: fine-tune a run on its training data plus the corrections users sent, and promote
the new model only if it is not worse on the original test split and better on held-out corrections."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from imgclf.config import with_overrides
from imgclf.errors import ImgclfError
from imgclf.evaluate.evaluation import eval_data, run_config
from imgclf.evaluate.stats import mcnemar
from imgclf.predict import predict_logits
from imgclf.rundir import atomic_write, load_model, preprocess_of, run_folder
from imgclf.serve.feedback import export
from imgclf.training import train

log = logging.getLogger(__name__)


def retrain(run: str | Path, feedback_db: str | Path, *, epochs: float = 1.0, lr_factor: float = 0.1,
            holdout: float = 0.3, seed: int = 0, name: str | None = None, out: str | Path | None = None,
            progress: bool = False) -> dict:
    """Fine-tune `run` (a run directory) on its data plus a seeded (1 - holdout) share of the feedback; score old
    and new on the original test split and the held-out feedback; write retrain.json into the new run and, if it
    is promoted, its name into CURRENT in the runs folder. Returns the comparison."""
    folder = run_folder(run)
    config = run_config(folder)
    if config is None:
        raise ImgclfError(f"{folder} has no config.yaml to retrain from; pass a run directory imgclf train wrote.")
    if not 0 < holdout < 1:
        raise ImgclfError(f"--holdout is the share of feedback kept for scoring, in (0, 1); got {holdout}.")
    out = Path(out) if out else folder.parent
    name = name or f"{folder.name}-retrained-{datetime.now():%Y%m%d-%H%M%S}"
    corrections = out / f"{name}.feedback"
    train_dir, held_dir = _split_feedback(feedback_db, corrections, holdout, seed)
    config = with_overrides(config, {"name": name, "out": str(out), "data.extra": str(train_dir),
                                     "model.init": str(folder), "train.epochs": epochs,
                                     "train.lr": config.train.lr * lr_factor})
    new = train(config, progress=progress).path
    scores = {label: _score(path, held_dir) for label, path in (("before", folder), ("after", new))}
    better = scores["after"]["feedback"]["accuracy"] > scores["before"]["feedback"]["accuracy"]
    kept = scores["after"]["test"]["accuracy"] >= scores["before"]["test"]["accuracy"]
    result = {"before": {"run": str(folder), **_numbers(scores["before"])},
              "after": {"run": str(new), **_numbers(scores["after"])},
              "test_mcnemar": mcnemar(scores["before"]["test"]["correct"], scores["after"]["test"]["correct"]),
              "feedback_train_images": sum(1 for _ in train_dir.rglob("*.*")),
              "promoted": better and kept,
              "reason": ("better on the held-out feedback and not worse on the test split" if better and kept else
                         "not better on the held-out feedback" if not better else "worse on the original test split"),
              "settings": {"epochs": epochs, "lr_factor": lr_factor, "holdout": holdout, "seed": seed}}
    atomic_write(new / "retrain.json", lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    if result["promoted"]:
        atomic_write(out / "CURRENT", lambda tmp: tmp.write_text(new.name + "\n"))
        log.info("promoted %s: %s", new, result["reason"])
    return result


def _split_feedback(db: str | Path, folder: Path, holdout: float, seed: int) -> tuple[Path, Path]:
    """Export the feedback images to folder/train/<label>/ and folder/holdout/<label>/, a seeded split."""
    if folder.exists():
        shutil.rmtree(folder)
    everything = folder / "all"
    count = export(db, everything)
    if count < 2:
        raise ImgclfError(f"{db} has {count} feedback row(s); retraining needs at least 2 (some to train on, some "
                          "to judge the new model by).")
    files = sorted(everything.rglob("*.*"))
    order = np.random.default_rng(seed).permutation(len(files))
    held = max(1, round(holdout * len(files)))
    for rank, index in enumerate(order):
        part = folder / ("holdout" if rank < held else "train") / files[index].parent.name
        part.mkdir(parents=True, exist_ok=True)
        files[index].rename(part / files[index].name)
    shutil.rmtree(everything)
    if not (folder / "train").exists():
        raise ImgclfError(f"{db} has too few feedback rows to train on after holding out {held}; collect more.")
    return folder / "train", folder / "holdout"


def _score(run: Path, held_out: Path) -> dict:
    """Per-image correctness of a run's model on its own test split and on the held-out feedback folder."""
    model, meta = load_model(run)
    scores = {}
    for part, source in (("test", None), ("feedback", f"folder:{held_out}")):
        data = eval_data(run, meta, source)
        logits = predict_logits(model, data.split, preprocess_of(meta), torch.device("cpu"))
        correct = logits.argmax(axis=1) == data.targets
        scores[part] = {"accuracy": float(correct.mean()), "images": len(correct), "correct": correct}
    return scores


def _numbers(score: dict) -> dict:
    return {part: {"accuracy": s["accuracy"], "images": s["images"]} for part, s in score.items()}
