"""Shared fixtures: the real MNIST from ../shared/datasets, and small image folders made on the spot."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import free_port
from imgclf.data import load_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    path = SHARED / "mnist"
    assert path.is_dir(), f"the real MNIST files are expected in {path} (see ../shared/datasets/README.md)"
    return path


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    return load_dataset("mnist", mnist_dir, allow_download=False)


@pytest.fixture(scope="session")
def mnist_run(tmp_path_factory, mnist_dir) -> Path:
    """A small real MNIST run (mnist-fast on 6,000 images, one epoch: about 97% test accuracy). Shared by
    several modules: copy it before writing into it."""
    from imgclf.config import load_config
    from imgclf.training import train

    config = load_config(None, {"out": str(tmp_path_factory.mktemp("runs")), "name": "fast", "data.dataset": "mnist",
                                "data.data_dir": str(mnist_dir), "data.subset": 6000, "data.val_fraction": 0,
                                "data.augment": "none", "data.num_workers": 0, "train.epochs": 1,
                                "train.batch_size": 64, "train.lr": 0.01})
    return train(config, progress=False).path


@pytest.fixture(scope="session")
def strangers(tmp_path_factory):
    """Images of none of MNIST's classes in nested folders: 40 real CIFAR-10 photos, 40 uniform-noise images, and
    one file that is not an image."""
    root = tmp_path_factory.mktemp("strangers")
    for cls in ("cat", "truck"):
        (root / "photos" / cls).mkdir(parents=True)
        for path in sorted((SHARED / "cifar10-train-25k" / cls).iterdir())[:20]:
            shutil.copy(path, root / "photos" / cls / path.name)
    (root / "noise").mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / "noise" / f"{i}.png")
    (root / "noise" / "broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """No test reads or writes the user's real cache, and the data dir comes only from arguments."""
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("IMGCLF_DATA_DIR", raising=False)


def _write_image(path: Path, size=(12, 10), mode: str = "RGB", seed: int = 0) -> Path:
    """A random image file; the format follows the suffix (PNG, JPEG, ...)."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)
    return path


@pytest.fixture
def write_image():
    """write_image(path, size=(w, h), mode='RGB' or 'L', seed=0): a random image file."""
    return _write_image


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """cat/ (RGB PNG + JPEG), dog/ (grayscale PNG, one corrupt file, one text file), empty/ (no images)."""
    root = tmp_path / "pets"
    for i in range(10):
        _write_image(root / "cat" / f"c{i}.{'png' if i % 2 else 'jpg'}", size=(16, 12), seed=i)
        _write_image(root / "dog" / f"d{i}.png", size=(20, 20), mode="L", seed=100 + i)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    return root


@pytest.fixture(scope="session")
def mnist_unlabelled(tmp_path_factory, mnist) -> Path:
    """300 real MNIST training digits (from index 40,000 on, none of the first 6,000 that runs train on) as PNGs
    nested at any depth, with folder names that mean nothing, plus a text file and a cut PNG to be skipped.
    Shared: do not write into it."""
    root = tmp_path_factory.mktemp("unlabelled")
    split = mnist.splits["train"]
    for i in range(300):
        path = root / f"batch{i % 3}" / ("deeper" if i % 2 else "") / f"{40_000 + i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(split.images[40_000 + i, 0].numpy()).save(path)
    (root / "README.txt").write_text("images users sent, kept for semi-supervised training")
    (root / "batch0" / "cut.png").write_bytes((root / "batch0" / "40000.png").read_bytes()[:60])
    return root


def _postgres_programs() -> Path:
    """The folder of PostgreSQL's server programs: on PATH, or where Debian's postgresql package puts them."""
    found = shutil.which("pg_ctl")
    candidates = [Path(found).resolve().parent] if found else sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    assert candidates, "PostgreSQL's server programs are needed: apt-get install postgresql (.ci/run installs it)"
    return candidates[-1]


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """A real PostgreSQL server for the session, on a loopback port, in a scratch folder (trust authentication).
    The server refuses to run as root, so as root it runs as Debian's postgres user."""
    programs = _postgres_programs()
    root = Path(tempfile.mkdtemp(prefix="imgclf-postgres-"))
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*as_user, programs / "initdb", "-D", root / "data", "-U", "imgclf", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, programs / "pg_ctl", "-D", root / "data", "-l", root / "log", "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://imgclf@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, programs / "pg_ctl", "-D", root / "data", "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server, request) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    import psycopg

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_server}/{name}"
