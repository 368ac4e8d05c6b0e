import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from imgclf.data import Preprocess, batches, default_preprocess, describe, load_dataset, to_memory
from imgclf.errors import DataError


def test_folder_is_split_and_problems_reported(image_folder, caplog):
    dataset = load_dataset(f"folder:{image_folder}", seed=1)
    assert dataset.classes == ["cat", "dog"]  # the empty class is left out
    assert sum(len(s) for s in dataset.splits.values()) == 20  # broken.png and notes.txt skipped
    assert {name: len(s) for name, s in dataset.splits.items()} == {"train": 16, "val": 2, "test": 2}
    problems = " ".join(dataset.problems)
    assert "broken.png (unreadable" in problems and "notes.txt (not an image file)" in problems
    assert "class folder(s) empty" in problems
    assert "broken.png" in caplog.text  # reported through logging too


def test_split_is_stratified_and_seeded(image_folder):
    a = load_dataset(f"folder:{image_folder}", seed=3, fractions={"train": 0.5, "test": 0.5})
    b = load_dataset(f"folder:{image_folder}", seed=3, fractions={"train": 0.5, "test": 0.5})
    c = load_dataset(f"folder:{image_folder}", seed=4, fractions={"train": 0.5, "test": 0.5})
    assert a.split("test").paths == b.split("test").paths != c.split("test").paths
    assert a.split("test").labels.bincount().tolist() == [5, 5]
    assert set(a.split("train").paths).isdisjoint(a.split("test").paths)


def test_strict_fails_on_problems_and_counts_files(image_folder):
    (image_folder / "cat" / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"fails --strict \(3 file\(s\) skipped\): .*dog/broken.png"):
        load_dataset(f"folder:{image_folder}", strict=True)  # 3 bad files in one problem, plus an empty class


def test_skipped_files_are_named_by_class_and_warned_once(tmp_path, write_image, caplog):
    """Loaded again and again in one process (as benchmark and tune trials do), the folder warns once; files are
    named <class>/<file> (nested ones too), never by an absolute path, and truncated JPEGs are among them."""
    root = tmp_path / "photos"
    for i in range(4):
        write_image(root / "ants" / f"{i}.jpg", size=(64, 64), seed=i)
        write_image(root / "bees" / "wild" / f"{i}.jpg", size=(64, 64), seed=10 + i)
    cut = root / "ants" / "0.jpg"
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])
    (root / "bees" / "wild" / "junk.png").write_bytes(b"not a png")
    for _ in range(3):
        dataset = load_dataset(f"folder:{root}", fractions={"train": 1.0})
    assert len(dataset.split("train")) == 7
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1
    assert "ants/0.jpg (unreadable: image file is truncated" in warnings[0]
    assert "bees/wild/junk.png (unreadable" in warnings[0]
    assert str(root / "bees") not in warnings[0]  # the folder is named once, the files relative to it


def test_images_keep_their_channels_and_decode(image_folder):
    dataset = load_dataset(f"folder:{image_folder}")
    split = dataset.split("train")
    channels = {split[i][0].shape[0]: dataset.classes[split[i][1]] for i in range(len(split))}
    assert channels == {3: "cat", 1: "dog"}
    info = describe(dataset)
    assert set(info["shapes"]) == {"3x12x16", "1x20x20"}
    assert len(info["mean"]) == 3  # mixed gray and RGB: gray is repeated to RGB


def test_streaming_batches_through_workers(image_folder):
    dataset = load_dataset(f"folder:{image_folder}", fractions={"train": 1.0})
    preprocess = default_preprocess(dataset).with_(size=(16, 16))
    seen = []
    for x, y in batches(dataset.split("train"), preprocess, batch_size=8, num_workers=2):
        assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32
        seen += y.tolist()
    assert sorted(seen) == sorted(dataset.split("train").labels.tolist())


def test_predefined_splits_and_mismatches(tmp_path, write_image):
    for split, classes in {"train": ["a", "b"], "val": ["a", "b"], "test": ["a"]}.items():
        for c in classes:
            write_image(tmp_path / split / c / "x.png")
    dataset = load_dataset(f"folder:{tmp_path}")
    assert list(dataset.splits) == ["train", "val", "test"]
    assert any("split 'test' has no images of class(es) b" in p for p in dataset.problems)
    write_image(tmp_path / "test" / "zebra" / "z.png")
    with pytest.raises(DataError, match=r"has class\(es\) zebra that train/ does not have"):
        load_dataset(f"folder:{tmp_path}")
    shutil.rmtree(tmp_path / "train")
    with pytest.raises(DataError, match=r"but no train/ folder"):
        load_dataset(f"folder:{tmp_path}")


def test_bad_folders_have_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"image folder .*missing does not exist"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"has no readable images in class subfolders"):
        load_dataset(f"folder:{tmp_path}")


def test_corrupt_file_found_while_training_names_the_file(tmp_path, write_image):
    path = write_image(tmp_path / "a" / "x.png")
    write_image(tmp_path / "b" / "y.png")
    dataset = load_dataset(f"folder:{tmp_path}", fractions={"train": 1.0})
    preprocess = default_preprocess(dataset)
    path.write_bytes(path.read_bytes()[:60])  # damaged after the scan
    with pytest.raises(DataError, match=r"cannot read image .*x.png"):
        list(batches(dataset.split("train"), preprocess, batch_size=2))


def test_a_truncated_jpeg_is_skipped_like_a_truncated_png(tmp_path, write_image):
    root = tmp_path / "photos"
    for i in range(3):
        for suffix in ("jpg", "png"):
            write_image(root / "a" / f"{i}.{suffix}", size=(64, 64), seed=i)
            write_image(root / "b" / f"{i}.{suffix}", size=(64, 64), seed=10 + i)
    cuts = {root / "a" / "0.jpg", root / "b" / "0.png"}
    for cut in cuts:
        cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])
    dataset = load_dataset(f"folder:{root}", fractions={"train": 1.0})
    train = dataset.split("train")
    assert len(train) == 10 and not cuts & set(train.paths)
    list(batches(train, default_preprocess(dataset), batch_size=4))  # every kept file decodes
    assert "a/0.jpg (unreadable: image file is truncated" in dataset.problems[0]
    assert "b/0.png (unreadable" in dataset.problems[0]
    with pytest.raises(DataError, match=r"a/0.jpg \(unreadable: image file is truncated"):
        load_dataset(f"folder:{root}", strict=True)


def test_rotated_photos_are_measured_as_decoded(tmp_path):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (40, 30)).save(tmp_path / c / "x.jpg", exif=exif)
    dataset = load_dataset(f"folder:{tmp_path}", fractions={"train": 1.0})
    assert describe(dataset)["size"] == (40, 30)
    assert dataset.split("train")[0][0].shape == (3, 40, 30)


def test_mixed_gray_and_rgb_folder_gets_rgb_preprocessing(tmp_path, write_image):
    for i in range(5):
        write_image(tmp_path / "a" / f"{i}.png", mode="L", seed=i)
    write_image(tmp_path / "b" / "0.png", mode="RGB")
    preprocess = default_preprocess(load_dataset(f"folder:{tmp_path}", fractions={"train": 1.0}))
    assert preprocess.channels == 3 and len(preprocess.mean) == 3


def test_tiny_folder_reports_an_empty_split(tmp_path, write_image):
    for c in ("a", "b"):
        write_image(tmp_path / c / "x.png")
    dataset = load_dataset(f"folder:{tmp_path}")
    assert list(dataset.splits) == ["train"]
    assert any("split 'val' is empty" in p for p in dataset.problems)


def test_in_memory_copy_gives_the_same_batches(image_folder):
    dataset = load_dataset(f"folder:{image_folder}", fractions={"train": 1.0})
    split = dataset.split("train")
    preprocess = default_preprocess(dataset).with_(size=(8, 8))
    memory = to_memory(split, preprocess, num_workers=2)
    assert memory.images.shape == (20, 3, 8, 8) and memory.images.dtype == torch.uint8
    order = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    for (a, ya), (b, yb) in zip(batches(split, preprocess, 6, order=order), batches(memory, preprocess, 6, order=order),
                                strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_photos_of_any_mode_size_and_orientation_go_in(tmp_path):
    """Palette, RGBA, CMYK, 16-bit gray, gray+alpha and an EXIF-rotated JPEG: all become 3-channel images."""
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    files = {"palette.png": Image.fromarray(rgb).convert("P"), "alpha.png": Image.fromarray(rgb).convert("RGBA"),
             "print.jpg": Image.fromarray(rgb).convert("CMYK"), "gray-alpha.png": Image.fromarray(rgb).convert("LA"),
             "deep.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).convert("I;16"),
             "big.png": Image.fromarray(rgb).resize((400, 300))}
    for name, image in files.items():
        (tmp_path / "a").mkdir(exist_ok=True)
        image.save(tmp_path / "a" / name)
    (tmp_path / "b").mkdir()
    Image.fromarray(rgb).save(tmp_path / "b" / "rotated.jpg", exif=exif)
    dataset = load_dataset(f"folder:{tmp_path}", fractions={"train": 1.0})
    assert not dataset.problems and len(dataset.split("train")) == 7
    pre = Preprocess((16, 16), 3, (0.5,) * 3, (0.25,) * 3)
    images = to_memory(dataset.split("train"), pre).images
    assert images.shape == (7, 3, 16, 16)
    rotated = dataset.split("train")[6][0]
    assert rotated.shape == (3, 40, 30)  # turned upright as a viewer shows it


def test_a_rare_format_is_named_but_strict_still_loads(tmp_path, write_image):
    for i in range(100):
        write_image(tmp_path / ("a" if i % 2 else "b") / f"{i}.jpg", size=(8, 8), seed=i)
    write_image(tmp_path / "a" / "placeholder.png", size=(8, 8))
    (tmp_path / "b" / "loop").symlink_to(tmp_path, target_is_directory=True)  # a link back up: not entered
    dataset = load_dataset(f"folder:{tmp_path}", fractions={"train": 1.0}, strict=True)
    assert len(dataset.split("train")) == 101
    assert any("a/placeholder.png (PNG among 100 JPEG)" in p for p in dataset.problems)
