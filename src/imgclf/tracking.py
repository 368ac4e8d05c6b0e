"""Experiment tracking: a run's numbers, figures and settings logged into TensorBoard and MLflow as it trains.

The tracker's package is imported only when a run asks for it; OFF (tracking off) does nothing. A tracker that
fails to write (or cannot reach its server) warns once and turns itself off: tracking never loses a run."""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import logging
import os
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.config import Config, config_keys
from imgclf.database import without_password
from imgclf.errors import ImgclfError, first_line

if TYPE_CHECKING:
    from imgclf.data import Preprocess, Split

log = logging.getLogger(__name__)
FOLDER = "tensorboard"  # a run's event files, in the run directory
MISCLASSIFIED = 8  # test images shown, the most confidently wrong first
GRAPH_PARAMS = 5_000_000  # larger models are not traced for the graph view (tracing them takes long)
# the metrics TensorBoard's hparams table shows beside each run's settings (their last values)
METRICS = ("test/accuracy", "test/loss", "epoch/val_acc", "epoch/val_loss", "epoch/train_acc", "epoch/train_loss")
FLUSH_SECONDS = 10  # MLflow: metrics are sent in batches, at least this often (and at each file, test and close)
# MLflow's HTTP client retries a failing request for minutes by default: a server that goes away mid-run costs
# seconds instead; and MLflow prints each run's link itself, where `imgclf train` prints the run's id (the user's
# own settings of these win)
MLFLOW_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
              "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
_PARENT: ContextVar[str | None] = ContextVar("mlflow_parent", default=None)  # the study run trials nest under


class Tracker(Protocol):
    """Where a run logs besides metrics.csv and summary.json; `step` is the run's optimizer step."""

    run_id: str | None  # the run's id in MLflow (kept in summary.json), None without MLflow

    def start(self, config: Config, model: torch.nn.Module, example: torch.Tensor) -> None:
        """The run's settings (flattened config) and the model's graph, once at its start."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Numbers by tag (step/loss, epoch/val_acc, ...)."""

    def test(self, step: int, logits: torch.Tensor, split: Split, classes: list[str], preprocess: Preprocess) -> None:
        """The test split's accuracy and loss, confusion matrix and most confidently wrong images."""

    def files(self, paths: list[Path]) -> None:
        """Files of the run (model.json, report.html, an export), kept by trackers that keep files."""

    def close(self, ok: bool = True) -> None:
        """Write out what is pending; ok is False when the run failed."""


class Off:
    """Tracking off: every call does nothing."""

    run_id = None

    def start(self, config: Config, model: torch.nn.Module, example: torch.Tensor) -> None:
        pass

    def scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def test(self, step: int, logits: torch.Tensor, split: Split, classes: list[str], preprocess: Preprocess) -> None:
        pass

    def files(self, paths: list[Path]) -> None:
        pass

    def close(self, ok: bool = True) -> None:
        pass


OFF = Off()


class Trackers:
    """Several trackers as one: each call goes to every one of them."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers
        self.run_id = next((t.run_id for t in trackers if t.run_id), None)

    def start(self, config: Config, model: torch.nn.Module, example: torch.Tensor) -> None:
        for tracker in self.trackers:
            tracker.start(config, model, example)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tracker in self.trackers:
            tracker.scalars(step, values)

    def test(self, step: int, logits: torch.Tensor, split: Split, classes: list[str], preprocess: Preprocess) -> None:
        for tracker in self.trackers:
            tracker.test(step, logits, split, classes, preprocess)

    def files(self, paths: list[Path]) -> None:
        for tracker in self.trackers:
            tracker.files(paths)

    def close(self, ok: bool = True) -> None:
        for tracker in self.trackers:
            tracker.close(ok)


def check_trackers(names: list[str]) -> None:
    """One clear error, before anything is trained, when a tracker's package is missing."""
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise ImgclfError(f"track: {name} needs the {name} package, which is not installed: "
                              f"pip install 'imgclf[track]' (or train without --track {name}).")


def open_tracker(config: Config, folder: Path, purge_step: int | None = None, run_id: str | None = None,
                 ended: bool = False) -> Tracker:
    """The trackers the run in `folder` asks for (OFF for none). A resumed run passes the first step it will log:
    TensorBoard then drops what an earlier session logged from that step on, after its last checkpoint. run_id:
    the run's MLflow run, to log into again; ended: a later command (evaluate, export) adds to a run that has
    ended, and leaves its MLflow status alone."""
    trackers: list[Tracker] = []
    if "tensorboard" in config.track:
        trackers.append(TensorBoardTracker(folder / FOLDER, purge_step))
    if "mlflow" in config.track:
        trackers.append(MLflowTracker(config.track_uri, folder.name, run_id, ended=ended,
                                      tags={"imgclf.run": str(folder.resolve())}))
    return OFF if not trackers else trackers[0] if len(trackers) == 1 else Trackers(trackers)


@contextmanager
def study_tracker(config: Config, name: str, run_id: str | None = None) -> Iterator[Tracker]:
    """A hyperparameter study's own MLflow run (when the config tracks into MLflow; else OFF), under which the runs
    trained in this block nest. run_id: the study's run from an earlier session, to continue."""
    if "mlflow" not in config.track:
        yield OFF
        return
    tracker = MLflowTracker(config.track_uri, name, run_id)
    token, ok = _PARENT.set(tracker.run_id), False
    try:
        yield tracker
        ok = True
    finally:
        _PARENT.reset(token)
        tracker.close(ok)


def _guarded(method: Callable) -> Callable:
    """The method, doing nothing once tracking is off, and turning it off (one warning) when it fails."""
    @functools.wraps(method)
    def call(self: TensorBoardTracker | MLflowTracker, *args: object) -> None:
        if self.writer is None:
            return
        try:
            method(self, *args)
        except Exception as err:  # a full disk, a removed folder, a server gone: the run goes on without tracking
            self.writer = None
            log.warning("%s tracking is off for the rest of this run: %s", self.NAME, first_line(err))
    return call


class TensorBoardTracker:
    """Event files in `folder`, written by torch's SummaryWriter (the tensorboard package's format)."""

    NAME, run_id = "TensorBoard", None

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
        self._scalars(step, _test_scores(logits, split.labels))
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

    def files(self, paths: list[Path]) -> None:
        pass  # TensorBoard shows numbers and images, not files

    @_guarded
    def close(self, ok: bool = True) -> None:
        self.writer.close()
        self.writer = None


class MLflowTracker:
    """A run in MLflow (a tracking server, or a local store) named `name`, written through MlflowClient: the
    config as params, the scalars as metrics (sent in batches), files as artifacts."""

    NAME = "MLflow"

    def __init__(self, uri: str | None, name: str, run_id: str | None = None, *, ended: bool = False,
                 tags: dict[str, str] | None = None) -> None:
        self.writer, self.run_id, self.ended = None, run_id, ended
        self.pending: list = []  # metrics not sent yet
        self.sent = time.monotonic()
        try:
            import mlflow

            for key, value in MLFLOW_ENV.items():
                os.environ.setdefault(key, value)
            uri = uri or mlflow.get_tracking_uri()  # else $MLFLOW_TRACKING_URI, else MLflow's default
            _check_reachable(uri)
            client = mlflow.MlflowClient(uri)
            if run_id is None:
                parent = _PARENT.get()
                tags = {**(tags or {}), **({"mlflow.parentRunId": parent} if parent else {})}
                self.run_id = client.create_run(_experiment(client), run_name=name, tags=tags).info.run_id
            elif not ended:  # a resumed run is running again
                client.update_run(run_id, status="RUNNING")
            self.writer = client
        except Exception as err:
            log.warning("MLflow tracking is off for this run: %s", first_line(err))

    @_guarded
    def start(self, config: Config, model: torch.nn.Module, example: torch.Tensor) -> None:
        from mlflow.entities import Param

        self.writer.log_batch(self.run_id, params=[Param(key, str(_hparam(value)))
                                                   for key, value, _, _ in config_keys(config) if key != "track_uri"])

    @_guarded
    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._add(step, values)
        if time.monotonic() - self.sent >= FLUSH_SECONDS:
            self._send()

    def _add(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(tag, float(value), now, step) for tag, value in values.items()]

    def _send(self) -> None:
        if self.pending:
            self.writer.log_batch(self.run_id, metrics=self.pending)
        self.pending, self.sent = [], time.monotonic()

    @_guarded
    def test(self, step: int, logits: torch.Tensor, split: Split, classes: list[str], preprocess: Preprocess) -> None:
        self._add(step, _test_scores(logits, split.labels))
        self._send()

    @_guarded
    def files(self, paths: list[Path]) -> None:
        self._send()
        for path in paths:
            self.writer.log_artifact(self.run_id, str(path))

    @_guarded
    def close(self, ok: bool = True) -> None:
        self._send()
        if not self.ended:
            self.writer.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")
        self.writer = None


def _check_reachable(uri: str) -> None:
    """A tracking server that does not answer within seconds fails here, not after minutes of MLflow's retries
    (any HTTP answer will do: the server is there)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5).close()
    except urllib.error.HTTPError:
        pass
    except OSError as err:
        reason = getattr(err, "reason", err)
        raise ImgclfError(f"cannot reach the tracking server {without_password(uri)} ({reason}); start it, or "
                          "give the right --track-uri") from None


def _experiment(client: object) -> str:
    """The id of the experiment $MLFLOW_EXPERIMENT_NAME (made when new), else of MLflow's Default experiment."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if not name:
        return "0"
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def _test_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The test split's accuracy and mean cross-entropy, by tag."""
    return {"test/accuracy": float((logits.argmax(1) == labels).float().mean()),
            "test/loss": F.cross_entropy(logits, labels).item()}


def _hparam(value: object) -> float | int | str:
    """A config value as the hparams plugin holds it: numbers and text as they are, anything else as JSON."""
    return value if isinstance(value, int | float | str) and not isinstance(value, bool) else json.dumps(value)
