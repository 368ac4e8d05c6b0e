"""The on-disk cache of folder scans, image statistics and decoded images: used when the files are the same,
missed when one changes or is added, rebuilt (never trusted) when damaged."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from imgclf.data import Preprocess, default_preprocess, load_dataset, to_memory
from imgclf.data import folder as folder_module
from imgclf.data import loader as loader_module
from imgclf.data.cache import cache_dir

PRE = Preprocess(size=(8, 8), channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.fixture
def photos(tmp_path, write_image):
    root = tmp_path / "photos"
    for i in range(6):
        write_image(root / "cat" / f"c{i}.jpg", size=(12, 10), seed=i)
        write_image(root / "dog" / f"d{i}.png", size=(10, 12), seed=50 + i)
    return root


@pytest.fixture
def decodes(monkeypatch):
    """How many images were decoded for to_memory (its loader's dataset, counted per image)."""
    calls = []
    original = loader_module._Prepared.__getitem__
    monkeypatch.setattr(loader_module._Prepared, "__getitem__", lambda self, i: calls.append(i) or original(self, i))
    return calls


def _train_split(root):
    return load_dataset(f"folder:{root}", fractions={"train": 1.0}).split("train")


def test_second_load_reads_decoded_images_from_the_cache(photos, decodes):
    first = to_memory(_train_split(photos), PRE)
    assert len(decodes) == 12
    second = to_memory(_train_split(photos), PRE)
    assert len(decodes) == 12  # nothing decoded again
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert list((cache_dir() / "folders" / "decoded").glob("*.safetensors"))


def test_another_size_is_another_entry(photos, decodes):
    to_memory(_train_split(photos), PRE)
    bigger = to_memory(_train_split(photos), PRE.with_(size=(16, 16)))
    assert len(decodes) == 24 and bigger.images.shape[-2:] == (16, 16)


def test_a_changed_or_added_file_misses_the_cache(photos, decodes, write_image):
    before = to_memory(_train_split(photos), PRE)
    changed = photos / "cat" / "c0.jpg"
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))  # a different modification time, whatever the clock says
    after = to_memory(_train_split(photos), PRE)
    assert len(decodes) == 24
    assert after.images[0].max() == 0 and not torch.equal(before.images[0], after.images[0])
    write_image(photos / "dog" / "d9.png", size=(10, 12), seed=99)
    assert len(to_memory(_train_split(photos), PRE)) == 13


def test_a_damaged_entry_is_rebuilt_with_a_warning(photos, decodes, caplog):
    good = to_memory(_train_split(photos), PRE)
    (entry,) = (cache_dir() / "folders" / "decoded").glob("*.safetensors")
    data = bytearray(entry.read_bytes())
    data[-5] ^= 0xFF  # one flipped pixel: the file still parses, only the checksum can tell
    entry.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        again = to_memory(_train_split(photos), PRE)
    assert "damaged" in caplog.text and "checksum" in caplog.text
    assert torch.equal(good.images, again.images) and len(decodes) == 24
    entry.write_bytes(b"not a safetensors file")
    assert torch.equal(to_memory(_train_split(photos), PRE).images, good.images)
    assert len(decodes) == 36


def test_a_folder_scan_is_not_repeated_for_the_same_files(photos, monkeypatch):
    (photos / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    checked = []
    original = folder_module._unreadable
    monkeypatch.setattr(folder_module, "_unreadable",
                        lambda path, decode: checked.append(path) or original(path, decode))
    first = load_dataset(f"folder:{photos}")
    assert len(checked) == 13 and any("dog/broken.png" in p for p in first.problems)
    second = load_dataset(f"folder:{photos}")
    assert len(checked) == 13  # the verdicts came from the cache
    assert second.problems == first.problems and second.splits["train"].paths == first.splits["train"].paths
    (photos / "dog" / "broken.png").unlink()
    load_dataset(f"folder:{photos}")
    assert len(checked) == 25  # one file fewer: checked again


def test_image_statistics_are_cached(photos, monkeypatch):
    from imgclf.data import core

    first = default_preprocess(load_dataset(f"folder:{photos}"))
    monkeypatch.setattr(core, "channel_stats", lambda *a, **k: pytest.fail("statistics computed again"))
    assert default_preprocess(load_dataset(f"folder:{photos}")) == first


def test_an_unwritable_cache_costs_only_speed(photos, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(blocker))
    with caplog.at_level(logging.WARNING):
        split = to_memory(_train_split(photos), PRE)
    assert len(split) == 12 and "could not write the cache entry" in caplog.text
