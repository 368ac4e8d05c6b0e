"""Helpers of the serving tests: a real uvicorn server in a thread, PNG bytes from arrays."""

from __future__ import annotations

import io
import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import uvicorn
from PIL import Image

from imgclf.serve.app import ServeConfig, create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(run, **settings):
    """A real server for `run` in a thread; yields its base URL and stops it (gracefully) afterwards."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(run, ServeConfig(**settings)), host="127.0.0.1", port=port,
                                           log_level="warning"))
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
