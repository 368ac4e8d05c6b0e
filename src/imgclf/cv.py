"""`imgclf cv`: one training config run over stratified k folds and/or several seeds, with mean and spread.

Every fold is an ordinary, resumable run directory (data.folds and data.fold in its config.yaml say which
part of the training data it validated on); the test split is never used for any choice."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from imgclf.config import Config
from imgclf.errors import ImgclfError
from imgclf.evaluate.stats import mean_std
from imgclf.rundir import atomic_write
from imgclf.training import RunSummary, train

log = logging.getLogger(__name__)
METRICS = ("val_acc", "val_loss", "test_acc", "epochs", "train_seconds")


def check_counts(folds: int, seeds: int) -> None:
    """At least one fold and seed, and more than one run in all."""
    if folds < 1 or seeds < 1:
        raise ImgclfError(f"--folds and --seeds must be at least 1, got {folds} and {seeds}.")
    if folds == 1 and seeds == 1:
        raise ImgclfError("one fold and one seed is a single run; use --folds 5 and/or --seeds 3 (or imgclf train).")


def cross_validate(config: Config, folds: int = 5, seeds: int = 1, progress: bool = True) -> tuple[dict, Path]:
    """Train `config` for every (fold, seed) into <out>/<name>/fold<i>-seed<s>/; returns the results
    (per run, then mean and sample std of each metric) and the path of cv.json next to the runs.

    folds=1 keeps the config's own validation split and only varies the seed."""
    check_counts(folds, seeds)
    name = config.name or f"cv-{config.model.name}-{Path(config.data.dataset.removeprefix('folder:')).name}" \
                          f"-{datetime.now():%Y%m%d-%H%M%S}"
    parent = Path(config.out) / name
    if parent.exists():
        raise ImgclfError(f"{parent} already exists; choose another --name.")
    rows = []
    for fold in range(folds):
        for offset in range(seeds):
            seed = config.train.seed + offset
            log.info("fold %d of %d, seed %d", fold + 1, folds, seed)
            run = train(replace(config, name=f"fold{fold}-seed{seed}", out=str(parent),
                                data=replace(config.data, folds=folds if folds > 1 else None, fold=fold),
                                train=replace(config.train, seed=seed)), progress=progress)
            rows.append({"fold": fold, "seed": seed, "run": str(run.path), **_scores(run.history, run.summary)})
    summary = {m: mean_std([r[m] for r in rows]) for m in METRICS if all(r[m] is not None for r in rows)}
    result = {"folds": folds, "seeds": seeds, "runs": rows, "summary": summary}
    atomic_write(parent / "cv.json", lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    return result, parent / "cv.json"


def _scores(history: list[dict], summary: RunSummary) -> dict:
    """The validation scores of the epoch that was kept, the saved model's test accuracy, time and length."""
    kept = summary.best.epoch if summary.best else None
    row = next((r for r in history if r["epoch"] == kept), history[-1] if history else {})
    return {"val_acc": row.get("val_acc"), "val_loss": row.get("val_loss"), "test_acc": summary.test_acc,
            "epochs": summary.epochs, "train_seconds": summary.train_seconds}
