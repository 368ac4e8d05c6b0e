"""Experiment tracking: a run's numbers, figures and settings logged into TensorBoard as it trains.

The tracker's package is imported only when a run asks for it; OFF (tracking off) does nothing. A tracker that
fails to write warns once and turns itself off: tracking never loses a run."""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.config import Config, config_keys
from imgclf.errors import ImgclfError, first_line

if TYPE_CHECKING:
    from imgclf.data import Preprocess, Split

log = logging.getLogger(__name__)
FOLDER = "tensorboard"  # a run's event files, in the run directory
MISCLASSIFIED = 8  # test images shown, the most confidently wrong first
GRAPH_PARAMS = 5_000_000  # larger models are not traced for the graph view (tracing them takes long)
# the metrics TensorBoard's hparams table shows beside each run's settings (their last values)
METRICS = ("test/accuracy", "test/loss", "epoch/val_acc", "epoch/val_loss", "epoch/train_acc", "epoch/train_loss")


class Tracker(Protocol):
    """Where a run logs besides metrics.csv and summary.json; `step` is the run's optimizer step."""

    def start(self, config: Config, model: torch.nn.Module, example: torch.Tensor) -> None:
        """The run's settings (flattened config) and the model's graph, once at its start."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Numbers by tag (step/loss, epoch/val_acc, ...)."""

    def test(self, step: int, logits: torch.Tensor, split: Split, classes: list[str], preprocess: Preprocess) -> None:
        """The test split's accuracy and loss, confusion matrix and most confidently wrong images."""

    def close(self) -> None:
        """Write out what is pending."""


class Off:
    """Tracking off: every call does nothing."""

    def start(self, config: Config, model: torch.nn.Module, example: torch.Tensor) -> None:
        pass

    def scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def test(self, step: int, logits: torch.Tensor, split: Split, classes: list[str], preprocess: Preprocess) -> None:
        pass

    def close(self) -> None:
        pass


OFF = Off()


def check_trackers(names: list[str]) -> None:
    """One clear error, before anything is trained, when a tracker's package is missing."""
    if "tensorboard" in names and importlib.util.find_spec("tensorboard") is None:
        raise ImgclfError("track: tensorboard needs the tensorboard package, which is not installed: "
                          "pip install 'imgclf[track]' (or train without --track tensorboard).")


def open_tracker(names: list[str], folder: Path, purge_step: int | None = None) -> Tracker:
    """The tracker the run in `folder` asks for (OFF for none). A resumed run passes the first step it will log:
    TensorBoard then drops what an earlier session logged from that step on, after its last checkpoint."""
    return TensorBoardTracker(folder / FOLDER, purge_step) if "tensorboard" in names else OFF


def _guarded(method: Callable) -> Callable:
    """The method, doing nothing once tracking is off, and turning it off (one warning) when it fails."""
    @functools.wraps(method)
    def call(self: TensorBoardTracker, *args: object) -> None:
        if self.writer is None:
            return
        try:
            method(self, *args)
        except Exception as err:  # a full disk, a removed folder: the run goes on without tracking
            self.writer = None
            log.warning("TensorBoard tracking is off for the rest of this run: %s", first_line(err))
    return call


class TensorBoardTracker:
    """Event files in `folder`, written by torch's SummaryWriter (the tensorboard package's format)."""

    def __init__(self, folder: Path, purge_step: int | None = None) -> None:
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder), purge_step=purge_step)
        except Exception as err:
            log.warning("TensorBoard tracking is off for this run: %s", first_line(err))

    @_guarded
    def start(self, config: Config, model: torch.nn.Module, example: torch.Tensor) -> None:
        from torch.utils.tensorboard.summary import hparams

        settings = {key: _hparam(value) for key, value, _, _ in config_keys(config)}
        for summary in hparams(settings, dict.fromkeys(METRICS, 0.0))[:2]:  # the table's columns, the run's values
            self.writer.file_writer.add_summary(summary)
        if sum(p.numel() for p in model.parameters()) <= GRAPH_PARAMS and not config.model.pretrained:
            self._graph(model, example)

    def _graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        """The model's graph, traced in eval mode (no batch norm statistics or random numbers are touched)."""
        training = model.training
        try:
            with warnings.catch_warnings():  # torch.jit.trace is deprecated, and warns about the model's branches
                warnings.simplefilter("ignore")
                self.writer.add_graph(model.eval(), example)
        except Exception as err:  # a model the tracer cannot follow: the graph view is only a nicety
            log.debug("no model graph in TensorBoard: %s", first_line(err))
        finally:
            model.train(training)

    @_guarded
    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._scalars(step, values)

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    @_guarded
    def test(self, step: int, logits: torch.Tensor, split: Split, classes: list[str], preprocess: Preprocess) -> None:
        from imgclf.evaluate import metrics, plots
        from imgclf.evaluate.evaluation import misclassified

        targets = split.labels.numpy()
        probs = torch.softmax(logits, 1).numpy()
        self._scalars(step, {"test/accuracy": float((probs.argmax(1) == targets).mean()),
                            "test/loss": F.cross_entropy(logits, split.labels).item()})
        matrix = metrics.confusion(targets, probs.argmax(1), len(classes))
        self._image("test/confusion_matrix", plots.confusion_plot(matrix.tolist(), classes, "test confusion matrix",
                                                                  ".0f"), step)
        wrong = misclassified(probs, targets, classes, MISCLASSIFIED)
        if wrong:
            images = [preprocess.prepare(split[m["index"]][0]).numpy() for m in wrong]
            self._image("test/misclassified", plots.gallery(
                images, [f"{m['true']} -> {m['predicted']} ({m['confidence']:.2f})" for m in wrong], columns=4), step)

    def _image(self, tag: str, png: bytes, step: int) -> None:
        from PIL import Image

        self.writer.add_image(tag, np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), step, dataformats="HWC")

    @_guarded
    def close(self) -> None:
        self.writer.close()
        self.writer = None


def _hparam(value: object) -> float | int | str:
    """A config value as the hparams plugin holds it: numbers and text as they are, anything else as JSON."""
    return value if isinstance(value, int | float | str) and not isinstance(value, bool) else json.dumps(value)
