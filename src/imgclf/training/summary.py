"""What a training run ended with: its stop reason and summary.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from imgclf.evaluate.results import Result


class StopReason(str, Enum):
    """Why a training session ended; the value is the text summary.json holds."""

    DONE = "done"  # the configured steps all ran
    EARLY_STOP = "early stopping"  # the monitored value stopped improving
    PRUNED = "pruned"  # on_epoch asked to stop (a hyperparameter search pruned the trial)
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM
    TIME = "time budget"  # train.time ran out
    MAX_STEPS = "max steps"  # the caller's max_steps for this session

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        """Whether the run is complete (nothing left to resume)."""
        return self in (StopReason.DONE, StopReason.EARLY_STOP)


@dataclass(frozen=True)
class Best:
    """The kept weights: the monitored metric's value and where in training it was reached."""

    value: float
    metric: str  # val_acc, val_loss, or epoch when there is no validation split
    epoch: float
    step: int


@dataclass(frozen=True, kw_only=True)
class RunSummary(Result):
    """summary.json: how a run ended, how long it took, and the saved model's test accuracy."""

    stopped: StopReason
    epochs: float
    steps: int
    device: str
    threads: int
    processes: int = 1  # defaults: runs from before these were recorded
    best: Best | None
    train_seconds: float
    process_seconds: float
    skipped_steps: int
    train_images: int | None = None
    val_images: int | None = None
    test_acc: float | None = None  # None when the test split was not scored
    mlflow_run_id: str | None = None  # the run's MLflow run (tracked into MLflow), for evaluate and resume
    calibration: dict | None = None  # temperature, samples, val_ece_before/after (None: no validation split)
    unknown: dict | None = None  # unknown-input detection: method, check (AUROC per generated kind), warning,
    # seconds (fitting it and the temperature)

    def to_json(self) -> dict:
        """The summary.json object (no best is {}; an unscored test split and no MLflow run are left out)."""
        data = {**asdict(self), "stopped": self.stopped.value, "best": asdict(self.best) if self.best else {}}
        for key in ("test_acc", "mlflow_run_id", "calibration", "unknown"):
            if data[key] is None:
                del data[key]
        return data

    @classmethod
    def from_json(cls, data: dict) -> RunSummary:
        """A summary from the summary.json object (keys this version does not know are ignored)."""
        return super().from_json({**data, "stopped": StopReason(data["stopped"]),
                                  "best": Best(**data["best"]) if data.get("best") else None})

    @classmethod
    def read(cls, folder: Path) -> RunSummary | None:
        """The run's summary.json, or None when the run has not finished a session."""
        path = folder / "summary.json"
        return cls.load(path) if path.is_file() else None
