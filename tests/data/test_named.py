import functools
import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from imgclf.data import load_dataset
from imgclf.data.named import DATASETS, DatasetSpec, read_cifar_binary, read_idx_splits, resolve_files
from imgclf.errors import DataError


@pytest.fixture
def mirror(tmp_path):
    """A real HTTP server on a loopback port serving tmp_path/'mirror'."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _spec(mnist_dir: Path, mirror_root: Path, url: str, corrupt: str | None = None) -> DatasetSpec:
    """An MNIST spec whose mirror is the local server (MD5s of the shared, recompressed copies)."""
    files = {}
    for role, (name, _) in DATASETS["mnist"].files.items():
        (mirror_root / name).write_bytes((mnist_dir / name).read_bytes())
        md5 = hashlib.md5((mnist_dir / name).read_bytes()).hexdigest()
        files[role] = (name, "0" * 32 if name == corrupt else md5)
    return DatasetSpec("mnist", DATASETS["mnist"].classes, "digits", files, (url,), read_idx_splits)


def test_download_verifies_and_lands_in_the_cache(mnist_dir, mirror, monkeypatch, tmp_path):
    root, url = mirror
    monkeypatch.setitem(DATASETS, "mnist", _spec(mnist_dir, root, url))
    dataset = load_dataset("mnist")
    assert len(dataset.split("train")) == 60_000
    cached = sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir())
    assert ((tmp_path / "cache" / "mnist" / cached[0]).stat().st_mode & 0o044) == 0o044  # readable by others
    assert cached == sorted(name for name, _ in DATASETS["mnist"].files.values())  # no temp files left
    (root / "t10k-images-idx3-ubyte.gz").unlink()  # the second load must not need the mirror
    assert len(load_dataset("mnist").split("test")) == 10_000


def test_checksum_mismatch_fails_and_leaves_no_file(mnist_dir, mirror, monkeypatch, tmp_path):
    root, url = mirror
    spec = _spec(mnist_dir, root, url, corrupt="train-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz failed its checksum \(md5 [0-9a-f]{32}, "
                                        r"expected 0{32}\)"):
        resolve_files(spec)
    leftovers = [p.name for p in (tmp_path / "cache" / "mnist").iterdir()]
    assert "train-labels-idx1-ubyte.gz" not in leftovers
    assert not [name for name in leftovers if name.endswith(".part")]


def test_offline_error_says_where_it_looked_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setitem(DATASETS, "kmnist", DatasetSpec(
        "kmnist", DATASETS["kmnist"].classes, "digits", DATASETS["kmnist"].files,
        ("http://127.0.0.1:9/",), read_idx_splits))  # the discard port: nothing listens there
    with pytest.raises(DataError) as err:
        load_dataset("kmnist", tmp_path)
    message = str(err.value)
    for part in ("train-images-idx3-ubyte.gz", str(tmp_path), str(tmp_path / "kmnist"),
                 str(tmp_path / "cache" / "kmnist"), "could not download", "--data-dir", "IMGCLF_DATA_DIR"):
        assert part in message


def test_no_download_flag_is_respected(tmp_path):
    with pytest.raises(DataError, match="downloads were turned off"):
        load_dataset("fashion-mnist", allow_download=False)


def test_data_dir_resolution_order(mnist_dir, tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"data dir .*nowhere does not exist"):
        load_dataset("mnist", tmp_path / "nowhere")
    monkeypatch.setenv("IMGCLF_DATA_DIR", str(mnist_dir.parent))  # found in $IMGCLF_DATA_DIR/mnist
    paths = resolve_files(DATASETS["mnist"], allow_download=False)
    assert paths["train_images"] == mnist_dir / "train-images-idx3-ubyte.gz"
    monkeypatch.delenv("IMGCLF_DATA_DIR")
    cache = tmp_path / "cache" / "mnist"  # then the cache
    cache.mkdir(parents=True)
    for name, _ in DATASETS["mnist"].files.values():
        (cache / name).symlink_to(mnist_dir / name)
    assert resolve_files(DATASETS["mnist"], allow_download=False)["test_labels"].parent == cache


def test_unknown_name_suggests_close_ones():
    with pytest.raises(DataError, match=r"unknown dataset 'fashion_mnist'; did you mean fashion-mnist"):
        load_dataset("fashion_mnist")


def test_digits_loads_offline_split_stratified():
    dataset = load_dataset("digits")
    train, test = dataset.split("train"), dataset.split("test")
    assert len(train) + len(test) == 1797
    assert train.images.shape[1:] == (1, 8, 8) and train.images.max() == 255
    assert np.all(np.abs(np.bincount(test.labels.numpy()) / len(test) - 0.1) < 0.02)
    assert dataset.kind == "digits"


def _cifar_archive(path: Path, records_per_batch: int = 4, truncate: bool = False) -> np.ndarray:
    """A CIFAR-10 binary archive in the real layout, with random records; returns the test records."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
            records = rng.integers(0, 256, size=(records_per_batch, 3073), dtype=np.uint8)
            records[:, 0] %= 10
            data = records.tobytes()[:-7 if truncate else None]
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return records


def test_cifar_binary_archive_reads_without_pickle(tmp_path):
    test_records = _cifar_archive(tmp_path / "cifar-10-binary.tar.gz")
    dataset = load_dataset("cifar10", tmp_path, allow_download=False)
    train, test = dataset.split("train"), dataset.split("test")
    assert train.images.shape == (20, 3, 32, 32) and len(test) == 4
    assert test.labels.tolist() == test_records[:, 0].tolist()
    assert np.array_equal(test.images[1].numpy().ravel(), test_records[1, 1:])  # channel-major, as stored
    assert dataset.kind == "photos"


def test_plain_tar_cifar_archive_also_reads(tmp_path):
    import gzip

    _cifar_archive(tmp_path / "made.tar.gz")
    (tmp_path / "cifar-10-binary.tar").write_bytes(gzip.decompress((tmp_path / "made.tar.gz").read_bytes()))
    assert len(load_dataset("cifar10", tmp_path, allow_download=False).split("test")) == 4


def test_truncated_cifar_records_are_named(tmp_path):
    _cifar_archive(tmp_path / "cifar-10-binary.tar.gz", truncate=True)
    with pytest.raises(DataError, match=r"cifar-10-binary.tar.gz: the train records are truncated"):
        read_cifar_binary({"archive": tmp_path / "cifar-10-binary.tar.gz"}, 10)


def test_not_a_cifar_archive(tmp_path):
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match=r"is not a complete CIFAR-10 binary archive"):
        load_dataset("cifar10", tmp_path, allow_download=False)
