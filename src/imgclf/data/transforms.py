"""Preprocessing that travels with a model, and per-sample augmentation done a batch at a time.

Everything here works on uint8 or float tensors shaped (..., C, H, W), on any device.
torchvision.transforms.v2 draws one set of random parameters per call, so on a batch it
would augment every sample identically; `Augment` draws per-sample parameters instead
and applies them in one `grid_sample`, which keeps Python out of the per-sample loop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from imgclf.errors import DataError

# what PIL raises for a file that is not a readable image (or is a decompression bomb)
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as uint8 (C, H, W): 1 channel for grayscale modes, else 3 (RGB), EXIF-rotated."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16/32-bit or float gray: scale, don't clip
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if image.mode == "F" and values.max() <= 1 else 255.0 if values.max() <= 255 else 65535.0
        return torch.from_numpy(np.round(values.clip(0, top) * (255 / top)).astype(np.uint8)).unsqueeze(0)
    array = np.asarray(image.convert("L" if image.mode in GRAY_MODES else "RGB"))
    return torch.from_numpy(array.copy()).view(*array.shape[:2], -1).permute(2, 0, 1)  # (H, W, C) -> (C, H, W)


def read_image(path: Path) -> torch.Tensor:
    """An image file as uint8 (C, H, W) (see image_to_tensor), or an error naming the file."""
    try:
        with Image.open(path) as image:
            return image_to_tensor(image)
    except FileNotFoundError:
        raise DataError(f"there is no image {path}.") from None
    except UNREADABLE as err:
        raise DataError(f"cannot read image {path}: {err}.") from err


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Repeat gray to RGB (1 -> 3) or take luminance (3 -> 1); (..., C, H, W)."""
    have = images.shape[-3]
    if have == channels:
        return images
    if (have, channels) == (1, 3):
        return images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    if (have, channels) == (3, 1):  # ITU-R 601-2 luma, as PIL's convert("L")
        weights = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(3, 1, 1)
        return (images.float() * weights).sum(dim=-3, keepdim=True).round().to(images.dtype)
    raise DataError(f"cannot convert {have}-channel images to {channels} channels; "
                    "use 1 (grayscale) or 3 (RGB).")


@dataclass(frozen=True)
class Preprocess:
    """Resize, channel conversion and normalization: saved with a model, applied identically everywhere."""

    size: tuple[int, int]  # (H, W) the model sees
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(f"mean/std need {self.channels} values each, got {self.mean} and {self.std}.")
        if min(self.std) <= 0:
            raise DataError(f"std must be positive, got {self.std}.")

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (..., C, H, W) of any size -> uint8 (..., channels, *size)."""
        images = convert_channels(images, self.channels)
        if tuple(images.shape[-2:]) != tuple(self.size):
            batch = images.reshape(-1, *images.shape[-3:]).float()  # interpolate wants (B, C, H, W) floats
            resized = F.interpolate(batch, size=self.size, mode="bilinear", antialias=True, align_corners=False)
            images = resized.round().clamp(0, 255).to(torch.uint8).view(*images.shape[:-2], *self.size)
        return images

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """float in [0, 1] -> standardized per channel."""
        mean = torch.tensor(self.mean, device=images.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(-1, 1, 1)
        return (images - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """standardized -> float in [0, 1] (the inverse of normalize)."""
        mean = torch.tensor(self.mean, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(-1, 1, 1)
        return x * std + mean

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images of any size -> the float tensor the model takes."""
        return self.normalize(self.prepare(images).float() / 255)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        return cls(size=tuple(data["size"]), channels=int(data["channels"]),
                   mean=tuple(data["mean"]), std=tuple(data["std"]))

    def with_(self, **changes) -> Preprocess:
        """A copy with some fields changed (e.g. a larger size for a pretrained backbone)."""
        if "channels" in changes and changes["channels"] != self.channels and "mean" not in changes:
            gray = changes["channels"] == 1
            changes["mean"] = (sum(self.mean) / len(self.mean),) if gray else self.mean * 3
            changes["std"] = (sum(self.std) / len(self.std),) if gray else self.std * 3
        return replace(self, **changes)


@dataclass(frozen=True)
class Augment:
    """Random augmentation with its own parameters for every sample; x is float in [0, 1]."""

    rotate: float = 0.0  # max degrees either way
    scale: tuple[float, float] = (1.0, 1.0)
    translate: float = 0.0  # max shift as a fraction of the size
    shear: float = 0.0  # max degrees either way
    crop: float = 0.0  # random crop after zero padding: whole-pixel shifts up to this fraction
    hflip: bool = False
    brightness: float = 0.0  # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.0  # factor drawn from [1 - c, 1 + c]
    erase: float = 0.0  # probability of erasing a random rectangle
    noise: float = 0.0  # additive gaussian noise, its std drawn per sample from [0, noise]

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W), each sample transformed on its own."""
        def rand(*shape: int) -> torch.Tensor:  # uniform in [0, 1), drawn on the CPU for reproducibility
            return torch.rand(*shape, generator=generator).to(x.device)

        if self.rotate or self.shear or self.translate or self.crop or self.scale != (1.0, 1.0):
            x = self._affine(x, rand)
        if self.hflip:
            x = torch.where(rand(len(x), 1, 1, 1) < 0.5, x.flip(-1), x)
        if self.brightness:
            x = x * (1 + self.brightness * (2 * rand(len(x), 1, 1, 1) - 1))
        if self.contrast:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * (1 + self.contrast * (2 * rand(len(x), 1, 1, 1) - 1)) + mean
        if self.erase:
            x = x.masked_fill(self._erase_mask(x, rand), 0.0)
        if self.noise:
            noise = torch.randn(x.shape, generator=device_generator(generator, x.device), device=x.device)
            x = x + self.noise * rand(len(x), 1, 1, 1) * noise
        return x.clamp(0, 1)

    def _affine(self, x: torch.Tensor, rand) -> torch.Tensor:
        b, _, h, w = x.shape
        angle = math.radians(self.rotate) * (2 * rand(b) - 1)  # drawn in this order: angle, shear, scale, shift
        shear = math.radians(self.shear) * (2 * rand(b) - 1)
        lo, hi = self.scale
        scale = lo + (hi - lo) * rand(b)
        shift = self.translate * 2 * (2 * rand(b, 2) - 1)  # up to `translate` of the size, in [-1, 1] units
        if self.crop:
            pad = torch.tensor([round(self.crop * w), round(self.crop * h)], device=x.device)
            pixels = torch.floor(rand(b, 2) * (2 * pad + 1)) - pad  # whole pixels, so no interpolation blur
            shift = shift + 2 * pixels / torch.tensor([w, h], dtype=x.dtype, device=x.device)
        return affine(x, angle=angle, scale=scale, shift=shift, shear=shear)

    def _erase_mask(self, x: torch.Tensor, rand) -> torch.Tensor:
        """(B, 1, H, W) bool: one rectangle of 2-33% of the area, aspect 0.3-3.3, per chosen sample."""
        b, _, h, w = x.shape
        area = (0.02 + 0.31 * rand(b)) * h * w
        aspect = torch.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3)) * rand(b))
        eh = torch.sqrt(area * aspect).clamp(max=h)
        ew = torch.sqrt(area / aspect).clamp(max=w)
        top, left = rand(b) * (h - eh), rand(b) * (w - ew)
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        inside = ((ys >= top.view(b, 1, 1)) & (ys < (top + eh).view(b, 1, 1))
                  & (xs >= left.view(b, 1, 1)) & (xs < (left + ew).view(b, 1, 1)))
        return (inside & (rand(b) < self.erase).view(b, 1, 1)).unsqueeze(1)


def device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """A generator on `device` seeded by one draw from `generator`: large random tensors are drawn where they
    are used, and still follow the (CPU, checkpointed) generator."""
    if generator is None:
        return None
    return torch.Generator(device).manual_seed(int(torch.randint(2**62, (1,), generator=generator)))


def affine(x: torch.Tensor, *, angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
           shear: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W), sample i rotated by angle[i] and sheared by shear[i] radians, scaled by
    scale[i] and shifted by shift[i] = (x, y) in [-1, 1] units (1: half the size), zeros filling the border."""
    b, _, h, w = x.shape
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # Linear part in pixel units (rotation after shear, divided by scale: this maps output
    # to input coordinates), then rescaled to grid_sample's [-1, 1] units: D^-1 A D, D = diag(w, h).
    a = torch.stack([cos, cos * tan - sin, sin, sin * tan + cos], dim=1).view(b, 2, 2) / scale.view(b, 1, 1)
    d = torch.tensor([w, h], dtype=x.dtype, device=x.device)
    a = a * d.view(1, 1, 2) / d.view(1, 2, 1)
    theta = torch.cat([a, shift.view(b, 2, 1)], dim=2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# Digits must not be flipped (a mirrored 2 is not a 2); photos may be.
AUGMENT_PRESETS: dict[str, Augment] = {
    "none": Augment(),
    "digits": Augment(rotate=10, scale=(0.9, 1.1), translate=0.08),
    "photos": Augment(crop=0.125, hflip=True, brightness=0.2, contrast=0.2, erase=0.25),
    # short training from scratch (the fast small-photo recipe): only flips and 2-pixel shifts at 32px, as
    # airbench does; stronger augmentation pays off only over many more epochs
    "light": Augment(crop=0.0625, hflip=True),
}


def strong_augment(weak: Augment) -> Augment:
    """The strong augmentation of semi-supervised training (FixMatch, Sohn et al. 2020) built on the run's own
    (weak) one: a wider affine, brightness and contrast, noise, and a cutout on every image. Flips stay as the
    weak one has them, so digits are never mirrored. FixMatch's RandAugment picks discrete operations per
    image; these continuous ones run on a whole batch at once."""
    return replace(weak, rotate=max(weak.rotate, 25.0), scale=(min(weak.scale[0], 0.8), max(weak.scale[1], 1.2)),
                   translate=max(weak.translate, 0.125), shear=max(weak.shear, 15.0),
                   brightness=max(weak.brightness, 0.4), contrast=max(weak.contrast, 0.5), erase=1.0,
                   noise=max(weak.noise, 0.1))


def synthetic_outliers(x: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(count, C, H, W) images in [0, 1] of no class, made from a batch x (B, C, H, W) in [0, 1]: a quarter each
    of uniform noise, Gaussian noise, flat colours, and images of the batch cut into a 4x4 grid of shuffled
    patches. Outlier exposure without outlier data (after Hendrycks et al. 2019, who used real outlier sets)."""
    b, c, h, w = x.shape
    kinds = torch.arange(count, device=x.device) % 4  # (count,): which kind each outlier is

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(x.device)

    gauss = 0.5 + 0.25 * torch.randn(count, c, h, w, generator=device_generator(generator, x.device), device=x.device)
    p, q = h // 4, w // 4
    grid = x[torch.floor(rand(count) * b).long(), :, :4 * p, :4 * q].reshape(count, c, 4, p, 4, q)
    grid = grid.permute(0, 2, 4, 1, 3, 5).reshape(count, 16, c, p, q)[:, torch.argsort(rand(16))]
    shuffled = F.pad(grid.reshape(count, 4, 4, c, p, q).permute(0, 3, 1, 4, 2, 5).reshape(count, c, 4 * p, 4 * q),
                     (0, w - 4 * q, 0, h - 4 * p))
    out = torch.where((kinds == 0).view(-1, 1, 1, 1), rand(count, c, h, w), gauss)
    out = torch.where((kinds == 2).view(-1, 1, 1, 1), rand(count, c, 1, 1).expand(count, c, h, w), out)
    return torch.where((kinds == 3).view(-1, 1, 1, 1), shuffled, out).clamp(0, 1)


def augment_preset(name: str) -> Augment:
    """The named augmentation preset, with the valid names in the error."""
    try:
        return AUGMENT_PRESETS[name]
    except KeyError:
        raise DataError(f"unknown augmentation preset {name!r}; choose one of {', '.join(AUGMENT_PRESETS)}.") from None
