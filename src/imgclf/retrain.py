"""Close the feedback loop: fine-tune a run on its training data plus the corrections users sent, and promote
the new model only if it is not worse on the original test split and better on held-out corrections."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from datetime import datetime
from pathlib import Path

import torch

from imgclf.config import with_overrides
from imgclf.database import without_password
from imgclf.errors import ImgclfError
from imgclf.evaluate.evaluation import EvalData, eval_data, run_config
from imgclf.evaluate.stats import mcnemar
from imgclf.files import plain_name
from imgclf.predict import predict_logits
from imgclf.rundir import atomic_write, load_model, preprocess_of, run_folder
from imgclf.serve.feedback import export
from imgclf.training import train

log = logging.getLogger(__name__)


def retrain(run: str | Path, feedback_db: str | Path, *, epochs: float = 1.0, lr_factor: float = 0.1,
            holdout: float = 0.3, min_holdout: int = 10, name: str | None = None, out: str | Path | None = None,
            data_dir: str | Path | None = None, unlabelled: str | Path | None = None, progress: bool = False) -> dict:
    """Fine-tune `run` (a run directory) on its data plus about (1 - holdout) of the feedback; score old and new
    on the original test split and the held-out feedback; write retrain.json into the new run and, if it is
    promoted, its name into CURRENT in the runs folder. Returns the comparison. `data_dir`: where the run's
    data is now, if it moved (its image folder, or the folder with a named dataset's files). `unlabelled`: a folder
    of images without labels (e.g. what the service kept) that fine-tuning also learns from, through confident
    pseudo-labels (data.unlabelled); the promotion rule judges the result as any other.

    The feedback is what users sent: a hold-out of a few images decides little, and a user who sends wrong
    labels on purpose can steer it. The test split guards against the worst; review `imgclf feedback stats`."""
    folder = run_folder(run)
    config = run_config(folder)
    if config is None:
        raise ImgclfError(f"{folder} has no config.yaml to retrain from; pass a run directory imgclf train wrote.")
    if not 0 < holdout < 1:
        raise ImgclfError(f"--holdout is the share of feedback kept for scoring, in (0, 1); got {holdout}.")
    out = (Path(out) if out else folder.parent).resolve()
    name = plain_name(name or f"{folder.name}-retrained-{datetime.now():%Y%m%d-%H%M%S}", "--name")
    if (out / name).exists():
        raise ImgclfError(f"{out / name} already exists; pass another --name.")
    moved = {} if data_dir is None else {"data.dataset": f"folder:{data_dir}"} if config.data.dataset.startswith(
        "folder:") else {"data.data_dir": str(data_dir)}
    feedback = out / f"{name}.feedback"  # the config is checked before the feedback is exported into it
    semi = {} if unlabelled is None else {"data.unlabelled": str(Path(unlabelled).expanduser().resolve())}
    config = with_overrides(config, {**moved, **semi, "name": name, "out": str(out),
                                     "data.extra": str(feedback / "train"), "model.init": str(folder.resolve()),
                                     "model.pretrained": False, "train.epochs": epochs,
                                     "train.lr": config.train.lr * lr_factor})
    train_dir, held_dir = _split_feedback(feedback_db, feedback, holdout, min_holdout)
    new = train(config, progress=progress).path
    models = {label: load_model(path) for label, path in (("before", folder), ("after", new))}
    meta = models["before"][1]  # both models know the same classes: the data is read once for both
    parts = {"test": eval_data(folder, meta, data_dir=data_dir),
             "feedback": eval_data(folder, meta, f"folder:{held_dir}")}
    scores = {label: _score(model, own_meta, parts) for label, (model, own_meta) in models.items()}
    better = scores["after"]["feedback"]["accuracy"] > scores["before"]["feedback"]["accuracy"]
    kept = scores["after"]["test"]["accuracy"] >= scores["before"]["test"]["accuracy"]
    result = {"before": {"run": str(folder), **_numbers(scores["before"])},
              "after": {"run": str(new), **_numbers(scores["after"])},
              "test_mcnemar": mcnemar(scores["before"]["test"]["correct"], scores["after"]["test"]["correct"]),
              "feedback_train_images": sum(1 for _ in train_dir.rglob("*.*")),
              "promoted": better and kept,
              "reason": ("better on the held-out feedback and not worse on the test split" if better and kept else
                         "not better on the held-out feedback" if not better else "worse on the original test split"),
              "settings": {"epochs": epochs, "lr_factor": lr_factor, "holdout": holdout, "min_holdout": min_holdout,
                           "unlabelled": config.data.unlabelled}}
    atomic_write(new / "retrain.json", lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    if result["promoted"]:
        atomic_write(out / "CURRENT", lambda tmp: tmp.write_text(new.name + "\n"))
        log.info("promoted %s: %s", new, result["reason"])
    return result


def _split_feedback(db: str | Path, folder: Path, holdout: float, min_holdout: int) -> tuple[Path, Path]:
    """Export the feedback images to folder/train/<label>/ and folder/holdout/<label>/. An image goes to the
    hold-out by a hash of its bytes: the same image always lands on the same side, in every retraining round,
    so nothing trained on is ever scored on."""
    if folder.exists():
        shutil.rmtree(folder)
    everything = folder / "all"
    export(db, everything)
    files = sorted(everything.rglob("*.*"))
    held = 0
    for path in files:
        digest = int(hashlib.sha256(path.read_bytes()).hexdigest()[:8], 16) / 16**8
        part = "holdout" if digest < holdout else "train"
        held += part == "holdout"
        (folder / part / path.parent.name).mkdir(parents=True, exist_ok=True)
        path.rename(folder / part / path.parent.name / path.name)
    shutil.rmtree(everything)
    if held < min_holdout or held == len(files):
        raise ImgclfError(f"{without_password(db)} has {len(files)} feedback images, {held} of them held out to "
                          "judge the new model; "
                          f"retraining needs at least {min_holdout} held out and some to train on. Collect more "
                          "feedback (or lower --min-holdout, at the price of a noisier decision).")
    return folder / "train", folder / "holdout"


def _score(model: torch.nn.Module, meta: dict, parts: dict[str, EvalData]) -> dict:
    """Per-image correctness of a model (with its own preprocessing) on each evaluation set."""
    scores = {}
    for part, data in parts.items():
        logits = predict_logits(model, data.split, preprocess_of(meta), torch.device("cpu"))
        correct = logits.argmax(axis=1) == data.targets
        scores[part] = {"accuracy": float(correct.mean()), "images": len(correct), "correct": correct}
    return scores


def _numbers(score: dict) -> dict:
    return {part: {"accuracy": s["accuracy"], "images": s["images"]} for part, s in score.items()}
