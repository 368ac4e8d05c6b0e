import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from imgclf.data import AUGMENT_PRESETS, Augment, Preprocess, augment_preset, image_to_tensor
from imgclf.data.transforms import convert_channels
from imgclf.errors import DataError

MNIST_PRE = Preprocess(size=(28, 28), channels=1, mean=(0.1307,), std=(0.3081,))


def test_mnist_to_alexnet_input(mnist):
    preprocess = MNIST_PRE.with_(size=(224, 224), channels=3)
    assert preprocess.mean == (0.1307,) * 3
    x = preprocess(mnist.split("train").images[:4])
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 2])  # gray repeated into every channel


def test_normalization_standardizes_real_data(mnist):
    x = MNIST_PRE(mnist.split("test").images)
    assert abs(x.mean().item()) < 0.02 and abs(x.std().item() - 1) < 0.02


def test_round_trips_through_a_dict():
    preprocess = Preprocess(size=(32, 48), channels=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.2, 0.3))
    assert Preprocess.from_dict(preprocess.to_dict()) == preprocess


def test_bad_values_are_errors():
    with pytest.raises(DataError, match="mean/std need 3 values"):
        Preprocess(size=(8, 8), channels=3, mean=(0.5,), std=(0.5,))
    with pytest.raises(DataError, match="std must be positive"):
        Preprocess(size=(8, 8), channels=1, mean=(0.5,), std=(0.0,))
    with pytest.raises(DataError, match="cannot convert 4-channel images"):
        convert_channels(torch.zeros(1, 4, 2, 2, dtype=torch.uint8), 3)
    with pytest.raises(DataError, match="unknown augmentation preset 'flip'; choose one of none, digits, photos"):
        augment_preset("flip")


def test_serving_a_png_gives_the_same_input_as_training(tmp_path, mnist):
    """A digit saved as PNG and read back through PIL must reach the model bit-identical."""
    digit = mnist.split("test").images[0]  # (1, 28, 28)
    Image.fromarray(digit[0].numpy()).save(tmp_path / "digit.png")
    with Image.open(tmp_path / "digit.png") as image:
        served = MNIST_PRE(image_to_tensor(image).unsqueeze(0))
    assert torch.equal(served, MNIST_PRE(digit.unsqueeze(0)))


def test_image_modes_become_one_or_three_channels(tmp_path):
    rgba = Image.new("RGBA", (5, 4), (255, 0, 0, 128))
    assert image_to_tensor(rgba).shape == (3, 4, 5)
    assert image_to_tensor(Image.new("L", (5, 4))).shape == (1, 4, 5)
    assert image_to_tensor(Image.new("P", (5, 4))).shape == (3, 4, 5)


def test_rgb_to_gray_matches_pil():
    rgb = np.random.default_rng(0).integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    ours = convert_channels(torch.from_numpy(rgb).permute(2, 0, 1), 1)[0].numpy().astype(int)
    pil = np.asarray(Image.fromarray(rgb).convert("L"), dtype=int)
    assert np.abs(ours - pil).max() <= 1


def _batch(n=16, size=(12, 10), channels=1, seed=0):
    return torch.rand(n, channels, *size, generator=torch.Generator().manual_seed(seed))


def test_default_augment_is_identity():
    x = _batch()
    assert torch.equal(Augment()(x), x)


def test_each_sample_gets_its_own_parameters():
    x = _batch(n=1).expand(8, -1, -1, -1)  # eight copies of one image
    out = augment_preset("digits")(x, torch.Generator().manual_seed(0))
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) == 8


def test_crop_shifts_by_whole_pixels_without_blur():
    x = _batch(n=32, size=(16, 16))
    out = Augment(crop=0.25)(x, torch.Generator().manual_seed(1))
    for original, shifted in zip(x, out, strict=True):
        padded = torch.nn.functional.pad(original, (4, 4, 4, 4))
        windows = padded.unfold(1, 16, 1).unfold(2, 16, 1)  # (C, 9, 9, 16, 16): every 16x16 window
        assert (windows - shifted[:, None, None]).abs().amax(dim=(0, 3, 4)).min() < 1e-6


def test_hflip_flips_about_half_and_nothing_else():
    x = _batch(n=200)
    out = Augment(hflip=True)(x, torch.Generator().manual_seed(2))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert bool((flipped | kept).all()) and 70 < int(flipped.sum()) < 130


def test_digits_are_never_flipped():
    assert not AUGMENT_PRESETS["digits"].hflip and AUGMENT_PRESETS["photos"].hflip


def test_erasing_blanks_one_rectangle():
    x = torch.ones(50, 1, 20, 20)
    out = Augment(erase=1.0)(x, torch.Generator().manual_seed(3))
    zero = out == 0
    area = zero.float().mean(dim=(1, 2, 3))
    assert bool((area > 0).all()) and float(area.max()) <= 0.40
    rows, cols = zero.any(dim=3), zero.any(dim=2)  # a rectangle: zero area = rows x cols
    assert torch.equal(zero.sum(dim=(1, 2, 3)), rows.sum(dim=(1, 2)) * cols.sum(dim=(1, 2)))


def test_noise_has_its_own_strength_per_image_and_follows_the_generator():
    x = torch.full((200, 1, 16, 16), 0.5)
    out = Augment(noise=0.3)(x, torch.Generator().manual_seed(5))
    assert torch.equal(out, Augment(noise=0.3)(x, torch.Generator().manual_seed(5)))
    spread = (out - x).std(dim=(1, 2, 3))  # each image's noise std, drawn from [0, 0.3]
    assert float(spread.min()) < 0.03 and 0.25 < float(spread.max()) <= 0.33
    assert abs(float(spread.mean()) - 0.15) < 0.02


@settings(max_examples=25, deadline=None)
@given(rotate=st.floats(0, 45), scale=st.tuples(st.floats(0.5, 1), st.floats(1, 1.5)), translate=st.floats(0, 0.3),
       shear=st.floats(0, 30), crop=st.floats(0, 0.3), hflip=st.booleans(), brightness=st.floats(0, 0.9),
       contrast=st.floats(0, 0.9), erase=st.floats(0, 1), noise=st.floats(0, 1), height=st.integers(1, 24),
       width=st.integers(1, 24),
       channels=st.sampled_from([1, 3]), seed=st.integers(0, 2**31))
def test_any_augment_keeps_shape_and_range(rotate, scale, translate, shear, crop, hflip, brightness, contrast,
                                          erase, noise, height, width, channels, seed):
    augment = Augment(rotate, scale, translate, shear, crop, hflip, brightness, contrast, erase, noise)
    x = _batch(n=5, size=(height, width), channels=channels, seed=seed % 1000)
    out = augment(x, torch.Generator().manual_seed(seed))
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_rotation_keeps_proportions_on_non_square_images():
    """A centred disk is unchanged by any rotation, unless the aspect ratio is handled wrongly."""
    ys, xs = torch.meshgrid(torch.arange(30) - 14.5, torch.arange(60) - 29.5, indexing="ij")
    disk = ((ys**2 + xs**2) < 12**2).float().expand(16, 1, 30, 60)
    out = Augment(rotate=90)(disk, torch.Generator().manual_seed(4))
    assert (out - disk).abs().mean() < 0.03  # bilinear edges only; a wrong aspect gives ~0.14
    squashed = Augment(scale=(0.7, 0.7))(disk)
    assert (squashed - disk).abs().mean() > 0.05  # the check above can fail


def test_sixteen_bit_gray_is_scaled_not_clipped():
    values = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I")
    assert image_to_tensor(image).tolist() == [[[0, 4, 128, 255]]]
