"""Tracking into TensorBoard: event files that tensorboard's own reader reads back."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata, plugin_data_pb2

from imgclf.cli import main
from imgclf.config import load_config
from imgclf.training import StopReason, train
from imgclf.training.summary import RunSummary


def _config(tmp_path, **overrides):
    """The embedded digits set, 256 images: 3 steps of 64 per epoch, seconds per run."""
    return load_config(None, {"out": str(tmp_path), "name": "run", "data.dataset": "digits", "data.subset": 256,
                              "data.num_workers": 0, "model.name": "mnist-fast", "train.epochs": 2,
                              "train.batch_size": 64, **overrides})


def _events(run) -> EventAccumulator:
    return EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()


def _values(events: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in events.Scalars(tag)}


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """A tracked run trained in two sessions: 2 steps, then resumed to its end (6 steps, 2 epochs)."""
    config = _config(tmp_path_factory.mktemp("runs"), track=["tensorboard"])
    first = train(config, progress=False, max_steps=2, test=False)
    assert first.summary.stopped is StopReason.MAX_STEPS
    return train(resume=first.path, progress=False).path


def test_a_tracked_run_logs_steps_epochs_test_and_settings(tracked_run):
    events, summary = _events(tracked_run), RunSummary.read(tracked_run)
    loss = _values(events, "step/loss")
    assert sorted(loss) == list(range(1, 7)) == sorted(_values(events, "step/lr"))  # the resumed session continues
    rows = list(csv.DictReader((tracked_run / "metrics.csv").open()))
    train_loss, val_acc = _values(events, "epoch/train_loss"), _values(events, "epoch/val_acc")
    assert sorted(train_loss) == [3, 6] and val_acc == {int(r["step"]): pytest.approx(float(r["val_acc"]))
                                                        for r in rows}
    # each epoch's training loss is the mean of its steps' losses (equal batches): the steps logged are the run's
    assert train_loss[3] == pytest.approx(sum(loss[s] for s in (1, 2, 3)) / 3, rel=1e-5)
    assert train_loss[6] == pytest.approx(sum(loss[s] for s in (4, 5, 6)) / 3, rel=1e-5)
    assert _values(events, "test/accuracy") == {6: pytest.approx(summary.test_acc)}
    assert {"test/confusion_matrix", "test/misclassified"} <= set(events.Tags()["images"]) and events.Tags()["graph"]
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.SESSION_START_INFO_TAG]).session_start_info
    assert start.hparams["train.batch_size"].number_value == 64
    assert start.hparams["data.dataset"].string_value == "digits"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.EXPERIMENT_TAG]).experiment
    assert "test/accuracy" in {m.name.tag for m in experiment.metric_infos}


def test_evaluate_adds_its_metrics_to_the_run(tracked_run, tmp_path):
    run = shutil.copytree(tracked_run, tmp_path / "run")
    assert main(["evaluate", str(run), "--resamples", "20", "--latency-runs", "2", "-q"]) == 0
    report = json.loads((run / "report.json").read_text())
    events = _events(run)
    assert _values(events, "evaluate/digits/test/accuracy") == {6: pytest.approx(report["accuracy"])}
    low, high = report["confidence_intervals"]["accuracy"]
    assert _values(events, "evaluate/digits/test/accuracy_low") == {6: pytest.approx(low)}
    assert _values(events, "evaluate/digits/test/accuracy_high") == {6: pytest.approx(high)}
    assert sorted(_values(events, "step/loss")) == list(range(1, 7))  # the training's events are kept


def test_a_tracker_that_cannot_write_warns_once_and_the_run_goes_on(tmp_path, caplog):
    first = train(_config(tmp_path, **{"train.epochs": 1}), progress=False, max_steps=1, test=False)
    assert not (first.path / "tensorboard").exists()  # tracking off: no event files
    (first.path / "tensorboard").write_text("a file where the event files' folder would go")
    with caplog.at_level(logging.WARNING, logger="imgclf.tracking"):
        run = train(_config(tmp_path, **{"train.epochs": 1}, track=["tensorboard"]), resume=first.path,
                    progress=False)
    assert run.summary.stopped is StopReason.DONE and run.summary.test_acc is not None
    warnings = [r.getMessage() for r in caplog.records if r.name == "imgclf.tracking"]
    assert len(warnings) == 1 and "TensorBoard tracking is off" in warnings[0]


def test_a_missing_tensorboard_is_one_clear_error_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if the package were not installed
    assert main(["train", "--dataset", "digits", "--out", str(tmp_path / "runs"), "--track", "tensorboard"]) == 1
    assert "pip install 'imgclf[track]'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
