"""Tracking into MLflow: runs on a real tracking server (SQLite backend store), read back through MLflow's client."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from helpers import free_port
from imgclf.cli import main
from imgclf.config import load_config
from imgclf.training import StopReason, train
from imgclf.training.summary import RunSummary
from imgclf.tune import tune

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on a loopback port with a SQLite backend store, mlflow's tracking URI meanwhile; its URI."""
    folder, port = tmp_path_factory.mktemp("mlflow"), free_port()
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                                "--artifacts-destination", str(folder / "artifacts")],
                               cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # the server's first start creates its database: seconds on a busy machine
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, "mlflow server exited"
                time.sleep(0.2)
        mlflow.set_tracking_uri(uri)  # for mlflow.search_runs
        yield uri
    finally:
        mlflow.set_tracking_uri(None)
        process.terminate()
        process.wait(30)


def _config(tmp_path, uri, **overrides):
    """The embedded digits set, 256 images: 3 steps of 64 per epoch, seconds per run."""
    return load_config(None, {"out": str(tmp_path), "name": "run", "data.dataset": "digits", "data.subset": 256,
                              "data.num_workers": 0, "model.name": "mnist-fast", "train.epochs": 2,
                              "train.batch_size": 64, "track": ["mlflow"], "track_uri": uri, **overrides})


def _found(name):
    """The runs named `name` on the server, as mlflow.search_runs gives them (a DataFrame)."""
    return mlflow.search_runs(experiment_ids=["0"], filter_string=f"attributes.run_name = '{name}'")


def _metric(uri, run_id, key):
    return {m.step: m.value for m in mlflow.MlflowClient(uri).get_metric_history(run_id, key)}


@pytest.fixture(scope="module")
def tracked_run(server, tmp_path_factory):
    """A run tracked into MLflow, trained in two sessions: 2 steps, then resumed to its end (6 steps, 2 epochs)."""
    first = train(_config(tmp_path_factory.mktemp("runs"), server, name="digits-run"), progress=False, max_steps=2,
                  test=False)
    assert first.summary.stopped is StopReason.MAX_STEPS
    return train(resume=first.path, progress=False).path


def test_a_tracked_run_is_one_mlflow_run_with_params_metrics_and_files(server, tracked_run):
    found, summary = _found("digits-run"), RunSummary.read(tracked_run)
    assert len(found) == 1 and found["run_id"][0] == summary.mlflow_run_id  # the resumed session logged into it
    row = found.iloc[0]
    assert row["status"] == "FINISHED" and row["params.train.batch_size"] == "64"
    assert row["params.data.dataset"] == "digits" and row["metrics.test/accuracy"] == pytest.approx(summary.test_acc)
    loss = _metric(server, summary.mlflow_run_id, "step/loss")
    assert sorted(loss) == list(range(1, 7))  # both sessions' steps
    assert sorted(_metric(server, summary.mlflow_run_id, "epoch/val_acc")) == [3, 6]
    files = {f.path for f in mlflow.MlflowClient(server).list_artifacts(summary.mlflow_run_id)}
    assert {"model.json", "metrics.csv", "summary.json"} <= files


def test_evaluate_and_export_add_to_the_same_run(server, tracked_run, tmp_path):
    run = shutil.copytree(tracked_run, tmp_path / "run")
    assert main(["evaluate", str(run), "--resamples", "20", "--latency-runs", "2", "-q"]) == 0
    assert main(["export", str(run), "-q"]) == 0
    report, run_id = json.loads((run / "report.json").read_text()), RunSummary.read(run).mlflow_run_id
    low, high = report["confidence_intervals"]["accuracy"]
    metrics = mlflow.MlflowClient(server).get_run(run_id).data.metrics
    assert metrics["evaluate/digits/test/accuracy"] == pytest.approx(report["accuracy"])
    assert (metrics["evaluate/digits/test/accuracy_low"], metrics["evaluate/digits/test/accuracy_high"]) == (
        pytest.approx(low), pytest.approx(high))
    files = {f.path for f in mlflow.MlflowClient(server).list_artifacts(run_id)}
    assert {"report.html", "report.json", "model.onnx", "model.onnx.json"} <= files
    assert _found("digits-run")["status"][0] == "FINISHED"  # evaluating leaves the run's status alone


def test_tune_nests_each_trial_under_the_study_run(server, tmp_path):
    config = _config(tmp_path, server, name="digits-study", **{"train.epochs": 1})
    result = tune(config, {"train.lr": [0.001, 0.01]}, sampler="grid", pruner="none", seed=0)
    assert result["complete"] == 2
    parent = _found("digits-study")
    assert len(parent) == 1
    trials = mlflow.search_runs(experiment_ids=["0"],
                                filter_string=f"tags.mlflow.parentRunId = '{parent['run_id'][0]}'")
    assert sorted(trials["tags.mlflow.runName"]) == ["trial-0000", "trial-0001"]
    assert sorted(trials["params.train.lr"]) == ["0.001", "0.01"]


def test_an_unreachable_server_warns_once_and_the_run_goes_on(tmp_path, caplog):
    config = _config(tmp_path, f"http://127.0.0.1:{free_port()}", **{"train.epochs": 1})  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="imgclf.tracking"):
        run = train(config, progress=False)
    assert run.summary.stopped is StopReason.DONE and run.summary.test_acc is not None
    assert run.summary.mlflow_run_id is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "imgclf.tracking"]
    assert len(warnings) == 1 and "MLflow tracking is off" in warnings[0] and "cannot reach" in warnings[0]


def test_a_missing_mlflow_is_one_clear_error_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the package were not installed
    assert main(["train", "--dataset", "digits", "--out", str(tmp_path / "runs"), "--track", "mlflow"]) == 1
    assert "pip install 'imgclf[track]'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
