"""L-inf adversarial attacks (FGSM, PGD) on images in pixel units, [0, 1]; used by robustness and training.

`forward` maps pixel images (B, C, H, W) to logits, normalization included, so the eps ball is the one the
papers state: FGSM (Goodfellow et al. 2015), PGD with a random start (Madry et al. 2018)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from imgclf.data.transforms import device_generator
from imgclf.errors import ImgclfError

ATTACKS = ("fgsm", "pgd")
Forward = Callable[[torch.Tensor], torch.Tensor]


def _gradient_sign(forward: Forward, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sign of d(cross-entropy)/dx; the model's own parameter gradients are left untouched."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(forward(x).float(), y)
        (grad,) = torch.autograd.grad(loss, x)
    return grad.sign()


def fgsm(forward: Forward, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One step of size eps up the loss gradient's sign."""
    return (x + eps * _gradient_sign(forward, x, y)).clamp(0, 1).detach()


def pgd(forward: Forward, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 40,
        step_size: float | None = None, random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """`steps` signed-gradient steps (default size 2.5 eps / steps), each projected back into the eps ball
    around x and into [0, 1]; starts from a uniform random point of the ball unless random_start is off."""
    step_size = 2.5 * eps / steps if step_size is None else step_size
    adv = x.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=device_generator(generator, x.device), device=x.device)
        adv = (adv + eps * (2 * noise - 1)).clamp(0, 1)
    for _ in range(steps):
        adv = adv + step_size * _gradient_sign(forward, adv, y)
        adv = torch.minimum(torch.maximum(adv, x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def attack(name: str, forward: Forward, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 40,
           step_size: float | None = None, random_start: bool = True,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial versions of x (pixel units) by the named attack."""
    if name == "fgsm":
        return fgsm(forward, x, y, eps)
    if name == "pgd":
        return pgd(forward, x, y, eps, steps, step_size, random_start, generator)
    raise ImgclfError(f"unknown attack {name!r}; choose {' or '.join(ATTACKS)}.")


def check(names: list[str], eps: list[float], steps: int, step_size: float | None) -> None:
    """Attack settings a user typed, each problem in one sentence."""
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise ImgclfError(f"unknown attack {', '.join(unknown)}; choose from {', '.join(ATTACKS)}.")
    if names and not eps:
        raise ImgclfError("no eps given for the attacks; pass e.g. --eps 0.1,0.3 (or --attacks none).")
    if any(not 0 <= e <= 1 for e in eps):
        raise ImgclfError(f"eps is in pixel units of images scaled to [0, 1], so it must be in [0, 1]; got {eps}.")
    if steps < 1:
        raise ImgclfError(f"PGD needs at least 1 step, got {steps}.")
    if step_size is not None and not 0 < step_size <= 1:
        raise ImgclfError(f"the PGD step size must be in (0, 1] pixel units, got {step_size}.")
