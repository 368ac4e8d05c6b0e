"""Helpers of the serving tests: a real uvicorn server in a thread, PNG bytes from arrays, tiny saved models."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn
from PIL import Image

from helpers import free_port
from imgclf.data.transforms import Preprocess
from imgclf.models import create_model
from imgclf.rundir import save_model
from imgclf.serve.app import ServeConfig, create_app
from imgclf.serve.server import server_config


def serving(run, **settings):
    """A real server for `run` in a thread; yields its base URL and stops it (gracefully) afterwards."""
    config = ServeConfig(**settings)
    return serving_app(create_app(run, config), config)


@contextmanager
def serving_app(app, config: ServeConfig | None = None):
    """A real server for an ASGI app (served with the limits of `config`) in a thread; yields its base URL and stops
    it (gracefully) afterwards."""
    port = free_port()
    server = uvicorn.Server(server_config(app, config or ServeConfig(), "127.0.0.1", port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def encode(array: np.ndarray, mode: str | None = None, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, fmt, **save)
    return buffer.getvalue()


def start_server(run, *args: str, **popen) -> tuple[subprocess.Popen, str]:
    """`imgclf serve RUN ARGS` in its own process on a free port; returns the process and its base URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "imgclf", "serve", str(run), "--port", str(port), *args],
                               **popen)
    return process, f"http://127.0.0.1:{port}"


def wait_ready(url: str) -> None:
    """Until /health/ready answers 200 (a minute at most)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    raise AssertionError(f"{url} did not become ready")


def tiny_run(folder: Path, classes: list[str], channels: int, size: int) -> Path:
    """An untrained two-layer CNN for channels x size x size inputs, saved as a run directory (in milliseconds)."""
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    model = create_model("cnn", len(classes), channels, size, layers=2)
    save_model(folder, model, classes, Preprocess((size, size), channels, (0.5,) * channels, (0.25,) * channels))
    return folder
