import gzip
import hashlib

import numpy as np
import pytest

from imgclf.data import load_dataset
from imgclf.data.idx import read_idx
from imgclf.errors import DataError

# sha256 of the uncompressed files, from ../shared/datasets/README.md
SHA256 = {"train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
          "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"}


def test_real_mnist_loads_with_known_counts_and_labels(mnist):
    train, test = mnist.split("train"), mnist.split("test")
    assert train.images.shape == (60_000, 1, 28, 28) and test.images.shape == (10_000, 1, 28, 28)
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(train.labels.numpy()).tolist()[:2] == [5923, 6742]


@pytest.mark.parametrize("name", sorted(SHA256))
def test_reads_the_exact_bytes(mnist_dir, name):
    labels = read_idx(mnist_dir / name, ndim=1)
    header = bytes([0, 0, 8, 1]) + len(labels).to_bytes(4, "big")
    assert hashlib.sha256(header + labels.tobytes()).hexdigest() == SHA256[name]


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_uncompressed_and_gzipped_files_read_the_same(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx(images))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx(images)))
    assert np.array_equal(read_idx(tmp_path / "a", 3), images)
    assert np.array_equal(read_idx(tmp_path / "a.gz", 3), images)


@pytest.mark.parametrize(("content", "message"), [
    (b"\x00\x00\x08", "too short for an IDX header"),
    (b"\x00\x00\x0d\x03" + bytes(12), "not an IDX file of unsigned bytes"),
    (b"PK\x03\x04" + bytes(12), "magic number 504b0304"),
    (_idx(np.zeros(5, np.uint8)), "has 1 dimensions, expected 3"),
    (_idx(np.zeros((2, 3, 4), np.uint8))[:-5], "is truncated: header says shape (2, 3, 4)"),
    (_idx(np.zeros((2, 3, 4), np.uint8)) + b"x", "longer than its header says"),
])
def test_bad_idx_content_is_named(tmp_path, content, message):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match="train-images-idx3-ubyte") as err:
        read_idx(path, 3)
    assert message in str(err.value)


def test_truncated_gzip_names_the_file(tmp_path, mnist_dir):
    cut = tmp_path / "train-labels-idx1-ubyte.gz"
    cut.write_bytes((mnist_dir / cut.name).read_bytes()[:5000])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz is a corrupt or truncated gzip file"):
        read_idx(cut, 1)


def _fake_mnist(folder, labels_train=None, n_test=3):
    folder.mkdir(parents=True, exist_ok=True)
    labels_train = np.array([0, 1, 2, 3]) if labels_train is None else labels_train
    files = {"train-images-idx3-ubyte": np.zeros((4, 28, 28)), "train-labels-idx1-ubyte": labels_train,
             "t10k-images-idx3-ubyte": np.zeros((n_test, 28, 28)), "t10k-labels-idx1-ubyte": np.arange(3)}
    for name, array in files.items():
        (folder / name).write_bytes(_idx(np.asarray(array)))
    return folder


def test_label_out_of_range_is_an_error(tmp_path):
    _fake_mnist(tmp_path / "mnist", labels_train=np.array([0, 1, 12, 3]))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte has label 12, out of range for 10 classes"):
        load_dataset("mnist", tmp_path, allow_download=False)


def test_image_and_label_counts_must_match(tmp_path):
    _fake_mnist(tmp_path, n_test=5)
    with pytest.raises(DataError, match=r"has 3 labels for 5 images"):
        load_dataset("mnist", tmp_path, allow_download=False)


def test_uncompressed_files_in_a_name_subfolder_are_found(tmp_path):
    _fake_mnist(tmp_path / "mnist")
    dataset = load_dataset("mnist", tmp_path, allow_download=False)
    assert len(dataset.split("train")) == 4 and len(dataset.split("test")) == 3
