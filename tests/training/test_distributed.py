"""Distributed training for real: torchrun (or two hand-started processes) on CPU with gloo over loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from helpers import free_port
from imgclf.config import load_config, with_overrides
from imgclf.errors import ImgclfError
from imgclf.training import StopReason, train
from imgclf.training.distributed import Group
from imgclf.training.loop import Trainer

# paper-cnn has no batch norm and no dropout, and no augmentation: nothing random differs between 1 and 2 processes
EXACT = {"data.dataset": "mnist", "model.name": "paper-cnn", "data.subset": 1024, "data.augment": "none",
         "data.num_workers": 0, "train.batch_size": 64, "train.optimizer": "adam", "train.lr": 0.001,
         "train.schedule": "constant", "train.epochs": 1, "train.device": "cpu"}


def _args(overrides: dict) -> list[str]:
    return [arg for key, value in overrides.items() for arg in (f"--{key}", str(value))]


def _env(**extra: object) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in extra.items()}}


def _torchrun(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 -m imgclf train ARGS`."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "imgclf", "train", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=_env(), cwd=tmp_path)


def _new(tmp_path, mnist_dir, name: str, overrides: dict) -> list[str]:
    """The arguments of a new run `name`."""
    return ["--out", str(tmp_path / "runs"), "--name", name, "--data-dir", str(mnist_dir), *_args(overrides)]


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path, mnist_dir):
    done = _torchrun(tmp_path, *_new(tmp_path, mnist_dir, "two", EXACT))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("run: ") == 1 and "test accuracy" in done.stdout  # rank 0 alone reports
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["two"]
    one = train(load_config(None, {**EXACT, "out": str(tmp_path / "runs"), "name": "one",
                                   "data.data_dir": str(mnist_dir)}), progress=False)
    two, single = _weights(tmp_path / "runs" / "two"), _weights(one.path)
    # 16 Adam steps: the same batches, gradients averaged in another order -> float rounding only
    assert max((two[k] - single[k]).abs().max().item() for k in single) < 1e-4
    two_rows = (tmp_path / "runs" / "two" / "metrics.csv").read_text().splitlines()
    one_rows = (one.path / "metrics.csv").read_text().splitlines()
    for a, b in zip(two_rows[1].split(",")[:-1], one_rows[1].split(",")[:-1], strict=True):  # all but seconds
        assert float(a) == pytest.approx(float(b), abs=1e-5)
    summary = (tmp_path / "runs" / "two" / "summary.json").read_text()
    assert '"processes": 2' in summary and '"test_acc"' in summary


def _start(rank: int, port: int, tmp_path, *args: str) -> subprocess.Popen:
    """One process of a two-process run, started by hand as torchrun would, but with no agent that stops the
    other process when one fails (so the tests see what the survivor does)."""
    return subprocess.Popen([sys.executable, "-m", "imgclf", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env=_env(RANK=rank, LOCAL_RANK=0, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=port))


def _pair(tmp_path, *args: str) -> list[subprocess.Popen]:
    port = free_port()
    return [_start(rank, port, tmp_path, *args) for rank in (0, 1)]


def _succeed(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        _, err = process.communicate(timeout=180)
        assert process.returncode == 0, err


# batch norm, dropout and augmentation: each process's random streams must come back from state.pt
NOISY = {**EXACT, "model.name": "cnn", "model.options": "{layers: 2, width: 8}", "data.augment": "digits",
         "data.subset": 2048}
DOOMED = {**NOISY, "train.epochs": 50, "train.dist_timeout": 5}  # runs until a test stops one of its processes


def _first_epoch_saved(tmp_path, name: str, processes: list[subprocess.Popen]) -> None:
    """Until the checkpoint of the first epoch is on disk (written after its metrics.csv row)."""
    metrics, state = tmp_path / "runs" / name / "metrics.csv", tmp_path / "runs" / name / "state.pt"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and state.stat().st_mtime_ns >= metrics.stat().st_mtime_ns):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), "no epoch finished"
        time.sleep(0.05)


def _final(folder) -> tuple[dict, list[list[str]]]:
    """The last weights (not the best ones) and the metrics rows without their seconds."""
    state = torch.load(folder / "state.pt", weights_only=True)
    rows = [line.split(",")[:-1] for line in (folder / "metrics.csv").read_text().splitlines()]
    return state["model"], rows


def _lost(ranks: list[subprocess.Popen], signum: int) -> str:
    """Send `signum` to process 1; process 0's error output, once it has given up."""
    try:
        ranks[1].send_signal(signum)
        _, err = ranks[0].communicate(timeout=60)  # a hung peer: the 5 s timeout, not the default 30 minutes
    finally:
        for process in ranks:
            process.kill()
            process.communicate()
    assert ranks[0].returncode == 1, err[-3000:]
    assert "error: process 0 of 2 lost the other processes of this run" in err and "Traceback" not in err
    return err


def test_a_crashed_process_fails_the_run_clearly_and_it_resumes_exactly(tmp_path, mnist_dir):
    _succeed(_pair(tmp_path, *_new(tmp_path, mnist_dir, "whole", {**NOISY, "train.epochs": 3})))
    ranks = _pair(tmp_path, *_new(tmp_path, mnist_dir, "lost", DOOMED))
    _first_epoch_saved(tmp_path, "lost", ranks)
    err = _lost(ranks, signal.SIGKILL)
    assert f"--resume {tmp_path / 'runs' / 'lost'}" in err
    # two processes carry it on from its last checkpoint to the reference's 3 epochs: the same weights, bit for bit
    _succeed(_pair(tmp_path, "--resume", str(tmp_path / "runs" / "lost"), "--epochs", "3",
                   "--train.dist_timeout", "300"))
    (whole, whole_rows), (lost, lost_rows) = _final(tmp_path / "runs" / "whole"), _final(tmp_path / "runs" / "lost")
    assert all(torch.equal(whole[k], lost[k]) for k in whole) and whole_rows == lost_rows


def test_a_hung_process_fails_the_run_after_the_timeout(tmp_path, mnist_dir, caplog):
    ranks = _pair(tmp_path, *_new(tmp_path, mnist_dir, "hung", DOOMED))
    _first_epoch_saved(tmp_path, "hung", ranks)
    _lost(ranks, signal.SIGSTOP)
    # what was saved is intact: one process carries the run on (its random streams restart, with a warning)
    resumed = train(resume=tmp_path / "runs" / "hung",
                    config=load_config(tmp_path / "runs" / "hung" / "config.yaml", {"train.epochs": 2}),
                    progress=False)
    assert resumed.summary.stopped is StopReason.DONE and resumed.summary.processes == 1
    assert "saved by 2 process(es) and resumes with 1" in caplog.text


def test_a_process_that_never_joins_fails_the_run_after_the_timeout(tmp_path, mnist_dir):
    alone = _start(0, free_port(), tmp_path, *_new(tmp_path, mnist_dir, "alone", {**DOOMED, "train.dist_timeout": 3}))
    _, err = alone.communicate(timeout=60)
    assert alone.returncode == 1 and "Traceback" not in err
    assert "process 0 waited train.dist_timeout (3 s) for the 2 processes of this run to join" in err
    assert not (tmp_path / "runs" / "alone").exists()


def test_distributed_settings_are_checked_before_any_process_waits(tmp_path, mnist_dir):
    config = load_config(None, {**EXACT, "data.data_dir": str(mnist_dir)})
    with pytest.raises(ImgclfError, match="63 does not divide by 2: use a multiple of it"):
        Trainer(with_overrides(config, {"train.batch_size": 63}), tmp_path, False, group=Group(0, 2))
    with pytest.raises(ImgclfError, match=r"train\.sync_bn needs GPUs"):
        Trainer(with_overrides(config, {"train.sync_bn": True}), tmp_path, False, group=Group(1, 2))
    with pytest.raises(ImgclfError, match=r"train\.dist_timeout must be a positive number"):
        train(with_overrides(config, {"train.dist_timeout": 0}))
