"""Accuracy under corruptions (noise, blur, weather-free geometry, compression, occlusion) and under attack.

Corruptions follow the idea of MNIST-C (Mu & Gilmer 2019) and ImageNet-C (Hendrycks & Dietterich 2019):
each at 5 severities, applied to the image at the model's input size in pixel units [0, 1]. The severity
values are imgclf's own; spatial ones are stated for a 28-pixel image and scaled with the input size."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from imgclf import attacks
from imgclf.data import Preprocess, batches
from imgclf.data.transforms import affine
from imgclf.errors import ImgclfError
from imgclf.evaluate import plots
from imgclf.evaluate.evaluation import EvalData, ScoreOn, eval_data
from imgclf.evaluate.report import page, robustness_section
from imgclf.evaluate.robustness_report import AttackSettings, CorruptionScores, RobustnessReport
from imgclf.rundir import atomic_write, preprocess_of, run_folder
from imgclf.runtime import ExportedModel, device_for, is_export, open_model

SEVERITIES = 5


class Draw:
    """Random numbers for one corruption pass, from a generator on the images' device seeded once (the same
    seed gives the same numbers on the same kind of device)."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.generator, self.device = torch.Generator(device).manual_seed(seed), device

    def uniform(self, *shape: int) -> torch.Tensor:
        """Uniform in [0, 1)."""
        return torch.rand(*shape, generator=self.generator, device=self.device)

    def normal(self, *shape: int) -> torch.Tensor:
        """Standard normal."""
        return torch.randn(*shape, generator=self.generator, device=self.device)

    def sign(self, n: int) -> torch.Tensor:
        """-1 or 1, each with probability 1/2."""
        return torch.where(self.uniform(n) < 0.5, -1.0, 1.0)


def _pixels(x: torch.Tensor, level: float) -> float:
    """`level` pixels of a 28-pixel image, at this image's size."""
    return level * min(x.shape[-2:]) / 28


def _gaussian_noise(x, level, draw):
    return x + level * draw.normal(*x.shape)


def _shot_noise(x, level, draw):  # `level` photons at full intensity: fewer is noisier
    return torch.poisson(x * level, generator=draw.generator) / level


def _impulse_noise(x, level, draw):  # a `level` share of the pixels set to black or white
    u = draw.uniform(*x.shape)
    return torch.where(u < level / 2, 0.0, torch.where(u > 1 - level / 2, 1.0, x))


def _gaussian_blur(x, level, draw):
    sigma = _pixels(x, level)
    size = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(x, [size, size], [sigma, sigma])


def _motion_blur(x, level, draw):
    """The mean of copies shifted along a random direction per image, over a path `level` pixels long."""
    b, _, h, w = x.shape
    angle = draw.uniform(b) * math.pi
    direction = torch.stack([torch.cos(angle) / w, torch.sin(angle) / h], dim=1) * 2  # per pixel, in [-1, 1] units
    length = _pixels(x, level)
    steps = torch.linspace(-length / 2, length / 2, 2 * math.ceil(length) + 1).tolist()
    zeros, ones = torch.zeros(b, device=x.device), torch.ones(b, device=x.device)
    total = torch.zeros_like(x)
    for t in steps:  # a running sum: one shifted copy in memory at a time
        total += affine(x, angle=zeros, scale=ones, shift=direction * t, shear=zeros)
    return total / len(steps)


def _contrast(x, level, draw):  # contrast scaled down to `level`
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * level + mean


def _brightness(x, level, draw):
    return x + level


def _rotation(x, level, draw):  # `level` degrees, either way
    return _geometric(x, angle=math.radians(level) * draw.sign(len(x)))


def _translation(x, level, draw):  # `level` of the size in a random direction
    angle = draw.uniform(len(x)) * 2 * math.pi
    return _geometric(x, shift=torch.stack([torch.cos(angle), torch.sin(angle)], dim=1) * 2 * level)


def _scale(x, level, draw):  # shrunk to `level` of the size, about the centre
    return _geometric(x, scale=torch.full((len(x),), level, device=x.device))


def _shear(x, level, draw):  # `level` degrees, either way
    return _geometric(x, shear=math.radians(level) * draw.sign(len(x)))


def _geometric(x: torch.Tensor, **given: torch.Tensor) -> torch.Tensor:
    """affine() with the parameters not given left at the identity."""
    b = len(x)
    identity = {"angle": torch.zeros(b), "scale": torch.ones(b), "shift": torch.zeros(b, 2), "shear": torch.zeros(b)}
    return affine(x, **{k: v.to(x.device) for k, v in {**identity, **given}.items()})


def _elastic(x, level, draw):
    """A smooth random displacement field (Simard et al. 2003): white noise blurred with a 3-pixel sigma, scaled
    to a standard deviation of `level` pixels."""
    b, _, h, w = x.shape
    sigma = _pixels(x, 3.0)
    size = 2 * math.ceil(3 * sigma) + 1
    field = TF.gaussian_blur(draw.normal(b, 2, h, w), [size, size], [sigma, sigma])
    field = field / field.std(dim=(1, 2, 3), keepdim=True) * _pixels(x, level)
    scale = torch.tensor([2 / w, 2 / h], device=x.device).view(1, 2, 1, 1)  # pixels -> [-1, 1] units
    identity = F.affine_grid(torch.eye(2, 3, device=x.device).expand(b, 2, 3), list(x.shape), align_corners=False)
    grid = identity + (field * scale).permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _pixelate(x, level, draw):  # each block of `level` x `level` pixels replaced by its mean
    h, w = x.shape[-2:]
    k = max(1, round(_pixels(x, level)))
    blocks = F.avg_pool2d(x, k, stride=k, ceil_mode=True)
    return blocks.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)[..., :h, :w]


def _jpeg(x, level, draw):  # saved as JPEG at quality `level` and read back, by Pillow
    images = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, C)
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, "JPEG", quality=int(level))
        out.append(np.asarray(Image.open(buffer)).reshape(image.shape))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device).float() / 255


def _occlusion(x, level, draw):
    """A square `level` of the size at a random place, filled with uniform noise (random erasing, Zhong et al.)."""
    b, _, h, w = x.shape
    side_h, side_w = round(level * h), round(level * w)
    top, left = (draw.uniform(b) * (h - side_h + 1)).floor(), (draw.uniform(b) * (w - side_w + 1)).floor()
    ys, xs = torch.arange(h, device=x.device).view(1, h, 1), torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((ys >= top.view(b, 1, 1)) & (ys < (top + side_h).view(b, 1, 1))
              & (xs >= left.view(b, 1, 1)) & (xs < (left + side_w).view(b, 1, 1))).unsqueeze(1)
    return torch.where(inside, draw.uniform(*x.shape), x)


Corruption = Callable[[torch.Tensor, float, Draw], torch.Tensor]
# name -> (function, its level at severities 1..5); every level sequence gets further from the clean image
CORRUPTIONS: dict[str, tuple[Corruption, tuple[float, ...]]] = {
    "gaussian_noise": (_gaussian_noise, (0.08, 0.16, 0.24, 0.32, 0.40)),  # std
    "shot_noise": (_shot_noise, (60, 25, 12, 5, 3)),  # photons at full intensity
    "impulse_noise": (_impulse_noise, (0.03, 0.06, 0.09, 0.17, 0.27)),  # share of pixels
    "gaussian_blur": (_gaussian_blur, (0.4, 0.7, 1.0, 1.4, 1.8)),  # sigma, pixels
    "motion_blur": (_motion_blur, (2, 3.5, 5, 7, 9)),  # path length, pixels
    "contrast": (_contrast, (0.5, 0.4, 0.3, 0.2, 0.1)),  # remaining contrast
    "brightness": (_brightness, (0.1, 0.2, 0.3, 0.4, 0.5)),  # added to every pixel
    "rotation": (_rotation, (15, 25, 35, 45, 55)),  # degrees
    "translation": (_translation, (0.08, 0.12, 0.16, 0.20, 0.25)),  # share of the size
    "scale": (_scale, (0.85, 0.75, 0.65, 0.55, 0.45)),  # remaining size
    "shear": (_shear, (10, 20, 30, 40, 50)),  # degrees
    "elastic": (_elastic, (1.0, 1.5, 2.0, 2.5, 3.0)),  # displacement std, pixels
    "pixelate": (_pixelate, (2, 3, 4, 5, 6)),  # block side, pixels
    "jpeg": (_jpeg, (60, 35, 20, 10, 5)),  # quality
    "occlusion": (_occlusion, (0.2, 0.3, 0.4, 0.5, 0.6)),  # side, share of the size
}


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """(B, C, H, W) float images in [0, 1] -> the same shape, dtype and range, corrupted at severity 1..5;
    the same seed gives the same result."""
    return corruptor(name, severity, seed)(x)


def corruptor(name: str, severity: int, seed: int = 0) -> Callable[..., torch.Tensor]:
    """A function of a batch that applies one corruption, drawing its randomness from one seeded stream."""
    if name not in CORRUPTIONS:
        raise ImgclfError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)} (or all).")
    if not 1 <= severity <= SEVERITIES:
        raise ImgclfError(f"severity must be 1 to {SEVERITIES}, got {severity}.")
    function, levels = CORRUPTIONS[name]
    draws: dict[torch.device, Draw] = {}

    def apply(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # `generator` is there to fit batches()' augment slot; the corruption draws from its own stream
        draw = draws.setdefault(x.device, Draw(seed, x.device))
        return function(x.float(), levels[severity - 1], draw).clamp(0, 1).to(x.dtype)
    return apply


def robustness(run: str | Path, *, out: str | Path | None = None, **settings) -> tuple[RobustnessReport, Path]:
    """measure_robustness(run, **settings), written as robustness.json and robustness.html into `out` (default:
    the run; for an exported file, robustness-<file> in the run); returns the report and the HTML path."""
    report = measure_robustness(run, **settings)
    folder = run_folder(run)
    return report, write_robustness(report, Path(out) if out else folder / f"robustness-{Path(run).name}"
                                    if is_export(run) else folder)


def measure_robustness(run: str | Path, *, on: ScoreOn = ScoreOn(), corruptions: list[str] | None = None,
                       attack_names: tuple[str, ...] = attacks.ATTACKS,
                       eps: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3), steps: int = 40,
                       step_size: float | None = None, random_start: bool = True, limit: int | None = 2000,
                       batch_size: int = 500, seed: int = 0, progress: bool = False) -> RobustnessReport:
    """Accuracy of a run's model on clean, corrupted and attacked images of the data `on` names (default: its
    test split). Writes nothing."""
    corruptions = list(CORRUPTIONS) if corruptions is None else corruptions
    for name in corruptions:
        corruptor(name, 1)  # unknown names fail before any work
    attacks.check(list(attack_names), list(eps), steps, step_size)
    if seed < 0 or batch_size < 1:
        raise ImgclfError(f"the seed must be 0 or more and the batch size at least 1, got {seed} and {batch_size}.")
    model, meta = open_model(run)
    if attack_names and isinstance(model, ExportedModel):
        raise ImgclfError("attacks need the model's gradients: run robustness on the run directory, or pass "
                          "--attacks none to measure corruptions only.")
    folder, target = run_folder(run), device_for(model, on.device)
    model = model.to(target).eval()
    data = _sample(eval_data(folder, meta, on.source, on.data_dir, on.split), limit, seed)
    normalize, pixels = preprocess_of(meta).normalize, _pixel_preprocess(meta)

    def forward(x: torch.Tensor) -> torch.Tensor:  # pixel images -> logits
        return model(normalize(x))

    bar = tqdm(total=1 + len(corruptions) * SEVERITIES + len(attack_names) * len(eps), desc="robustness",
               unit="pass", leave=False, disable=not progress)

    def scored(corruption: Callable | None = None, adversary: Callable | None = None) -> float:
        accuracy = _accuracy(forward, data, pixels, batch_size, target, corruption, adversary)
        bar.update()
        return accuracy

    with bar:
        clean = scored()
        by_corruption = {name: [scored(corruption=corruptor(name, severity, seed))
                                for severity in range(1, SEVERITIES + 1)] for name in corruptions}
        by_attack = {}
        for name in attack_names:  # each attack's random starts from its own seeded stream
            generator = torch.Generator().manual_seed(seed)
            by_attack[name] = {str(e): scored(adversary=partial(
                attacks.attack, name, forward, eps=e, steps=steps, step_size=step_size, random_start=random_start,
                generator=generator)) for e in eps}
    settings = AttackSettings(steps, "2.5 x eps / steps" if step_size is None else step_size, random_start,
                              "L-inf, pixel units in [0, 1]", batch_size)
    return _report(folder, meta, data, data.name, clean, by_corruption, by_attack, settings, seed, run)


def write_robustness(report: RobustnessReport, out: Path) -> Path:
    """robustness.json and robustness.html in `out`; returns the HTML's path."""
    out.mkdir(parents=True, exist_ok=True)
    report.save(out / "robustness.json")
    atomic_write(out / "robustness.html", lambda tmp: tmp.write_text(
        page(f"Robustness of {report.model} on {report.dataset}",
             [("Robustness", robustness_section(report, plots.robustness_plot(report)))])))
    return out / "robustness.html"


def _pixel_preprocess(meta: dict) -> Preprocess:
    """The model's preprocessing without its normalization: batches come out as pixels in [0, 1]."""
    pre = preprocess_of(meta)
    return pre.with_(mean=(0.0,) * pre.channels, std=(1.0,) * pre.channels)


def _sample(data: EvalData, limit: int | None, seed: int) -> EvalData:
    """A seeded random `limit` images of the split (all of them if limit is None or larger)."""
    if limit is not None and limit < 1:
        raise ImgclfError(f"--limit must be at least 1 image, got {limit}.")
    if limit is None or limit >= len(data.split):
        return data
    chosen = np.sort(np.random.default_rng(seed).choice(len(data.split), size=limit, replace=False))
    return EvalData(data.dataset, data.split.take(chosen), data.targets[chosen], data.name)


def _accuracy(forward: attacks.Forward, data: EvalData, pre: Preprocess, batch_size: int, device: torch.device,
              corruption: Callable | None = None, adversary: Callable | None = None) -> float:
    """Share of `data` classified right, each batch corrupted (x -> x) or attacked (x, y -> x) first."""
    targets = torch.from_numpy(data.targets)
    correct = 0
    for i, (x, _) in enumerate(batches(data.split, pre, batch_size, augment=corruption, device=device)):
        y = targets[i * batch_size:(i + 1) * batch_size].to(device)  # in the model's class order
        if adversary is not None:
            x = adversary(x, y)
        with torch.no_grad():
            correct += int((forward(x).argmax(dim=1) == y).sum())
    return correct / len(data.split)


def _report(folder: Path, meta: dict, data: EvalData, split: str, clean: float, by_corruption: dict[str, list[float]],
            by_attack: dict[str, dict[str, float]], attack_settings: AttackSettings, seed: int,
            run: str | Path) -> RobustnessReport:
    """Every number, with mean corruption accuracy and relative degradation (1 - corrupted / clean)."""
    mean = float(np.mean([a for accs in by_corruption.values() for a in accs])) if by_corruption else None
    return RobustnessReport(
        run=str(folder), model_file=str(run), model=meta["architecture"]["name"], sha256=meta["sha256"],
        dataset=data.dataset.name, split=split, images=len(data.split), seed=seed,
        created=datetime.now(timezone.utc).isoformat(), clean_accuracy=clean,
        corruptions={name: CorruptionScores(list(CORRUPTIONS[name][1]), accs, float(np.mean(accs)),
                                            _degradation(clean, float(np.mean(accs))))
                     for name, accs in by_corruption.items()},
        mean_corruption_accuracy=mean, relative_degradation=None if mean is None else _degradation(clean, mean),
        attacks=by_attack, attack_settings=attack_settings)


def _degradation(clean: float, corrupted: float) -> float | None:
    return None if clean == 0 else 1 - corrupted / clean
