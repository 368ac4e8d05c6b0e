"""Custom CNNs: the seed paper's Table II network, a configurable (residual) CNN, and two MNIST nets."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from imgclf.errors import ImgclfError
from imgclf.models.base import Classifier, InputSpec
from imgclf.models.registry import register_model


def _scratch_input(image_size: int, in_channels: int) -> InputSpec:
    """Models trained from scratch normalize with the data's own statistics."""
    return InputSpec((image_size, image_size), in_channels)


@register_model("paper-cnn", default_size=28, min_size=4,
                description="the seed paper's Table II: conv32-pool-conv64-pool-dense128-dense")
def paper_cnn(num_classes: int, in_channels: int, image_size: int, **_) -> Classifier:
    """Conv2D(32, 3x3, same) -> MaxPool 2 -> Conv2D(64, 3x3, same) -> MaxPool 2 -> Dense(128) -> Dense(classes)."""
    side = image_size // 4
    body = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 32, 3, padding=1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(32, 64, 3, padding=1)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),  # (B, 64, H/4, W/4) -> (B, 64 * H/4 * W/4)
        ("dense1", nn.Linear(64 * side * side, 128)), ("relu3", nn.ReLU()),
    ]))
    return Classifier(body, 128, num_classes, _scratch_input(image_size, in_channels), "body.conv2")


class _Unit(nn.Module):
    """conv -> [batch norm] -> ReLU, with the input added before the ReLU when `residual`."""

    def __init__(self, cin: int, cout: int, kernel: int, batch_norm: bool, residual: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=not batch_norm)
        self.norm = nn.BatchNorm2d(cout) if batch_norm else nn.Identity()
        self.residual = residual and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x))
        return torch.relu(x + y if self.residual else y)


def conv_body(in_channels: int, image_size: int, layers: int, width: int, kernel: int, residual: bool,
              batch_norm: bool, pools: int, max_width: int = 512) -> tuple[nn.Sequential, int]:
    """`layers` conv units in `pools + 1` stages split by max-pooling (width doubles each stage), then
    global average pooling: (B, C, H, W) -> (B, final width)."""
    if layers < 1 or width < 1 or kernel < 1 or kernel % 2 == 0:
        raise ImgclfError(f"cnn needs layers >= 1, width >= 1 and an odd kernel; got layers={layers}, "
                          f"width={width}, kernel={kernel}.")
    if pools < 0 or image_size >> pools < 1:
        raise ImgclfError(f"{pools} poolings would shrink a {image_size}px input below one pixel; "
                          "use fewer pools or a larger image size.")
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    cin = in_channels
    for stage, units in enumerate(np.array_split(np.arange(layers), pools + 1)):
        cout = min(width << stage, max_width)
        if stage:
            modules[f"pool{stage}"] = nn.MaxPool2d(2)
        for i in units:
            modules[f"conv{i + 1}"] = _Unit(cin, cout, kernel, batch_norm, residual)
            cin = cout
    modules["gap"] = nn.AdaptiveAvgPool2d(1)
    modules["flatten"] = nn.Flatten()
    return nn.Sequential(modules), cin


@register_model("cnn", default_size=28, min_size=4,
                description="configurable CNN: layers, width, kernel, residual, batch norm, dropout, pools")
def cnn(num_classes: int, in_channels: int, image_size: int, layers: int = 6, width: int = 32, kernel: int = 3,
        residual: bool = True, batch_norm: bool = True, dropout: float = 0.1, pools: int = 2, **_) -> Classifier:
    """The paper's Table III knobs (layers 5/10/15, kernel 3/5/7) plus residual connections, batch norm, dropout."""
    body, features = conv_body(in_channels, image_size, layers, width, kernel, residual, batch_norm, pools)
    return Classifier(body, features, num_classes, _scratch_input(image_size, in_channels),
                      f"body.conv{layers}", dropout=dropout)


@register_model("mnist-fast", default_size=28, min_size=8,
                description="small and quick on a CPU: 3 conv-pool-BN stages of 16-32-64 channels")
def mnist_fast(num_classes: int, in_channels: int, image_size: int, **_) -> Classifier:
    """Built for CPU speed: pooling straight after each conv puts batch norm and ReLU on a quarter of
    the pixels (measured 1.4x faster per step than conv-BN-ReLU-pool at 28x28), and a flatten head."""
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    cin = in_channels
    for i, cout in enumerate((16, 32, 64), start=1):
        modules[f"conv{i}"] = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        modules[f"pool{i}"] = nn.MaxPool2d(2)
        modules[f"norm{i}"] = nn.BatchNorm2d(cout)
        modules[f"act{i}"] = nn.ReLU()
        cin = cout
    modules["flatten"] = nn.Flatten()  # (B, 64, H/8, W/8) -> (B, 64 * H/8 * W/8)
    side = image_size // 8
    # Grad-CAM on the 7x7 maps of stage 2: at 28x28 the last stage's 3x3 maps are too coarse to point at
    # a stroke (measured on MNIST: 30% of act3's Grad-CAM mass on a 28% stroke area, 56% for act2)
    return Classifier(nn.Sequential(modules), 64 * side * side, num_classes,
                      _scratch_input(image_size, in_channels), "body.act2")


@register_model("mnist-best", default_size=28, min_size=8,
                description="stronger residual CNN for best accuracy: 8 conv units of 32-64-128 channels")
def mnist_best(num_classes: int, in_channels: int, image_size: int, **_) -> Classifier:
    """Sized for a CPU: ~43M multiply-adds per 28x28 image, so an epoch takes minutes, not hours."""
    body, features = conv_body(in_channels, image_size, layers=8, width=32, kernel=3, residual=True,
                               batch_norm=True, pools=2)
    return Classifier(body, features, num_classes, _scratch_input(image_size, in_channels), "body.conv8",
                      dropout=0.25)


class _Stage(nn.Module):
    """conv -> max-pool -> BN -> GELU halves the resolution; then a residual conv -> BN -> GELU.
    Pooling right after the first conv puts the rest of the stage on a quarter of the pixels."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2),
                                  nn.BatchNorm2d(cout), nn.GELU())
        self.res = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)  # (B, cin, H, W) -> (B, cout, H/2, W/2)
        return x + self.res(x)


class _Scale(nn.Module):
    """Multiplies the features by a constant, so the logits start small (but for the head's bias), which keeps a
    high learning rate stable (as in the fast ResNet-9 CIFAR-10 recipes, which scale by 1/8)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


@register_model("photo-fast", default_size=32, min_size=16,
                description="small residual CNN for small RGB photos on a CPU (in the spirit of airbench)")
def photo_fast(num_classes: int, in_channels: int, image_size: int, widths: tuple[int, ...] = (48, 96, 192),
               **_) -> Classifier:
    """A 3x3 stem, then one _Stage per width (each halves the resolution), then global max pooling.
    At 32x32 with the default widths 48-96-192: 0.66M parameters, 48M multiply-adds per image."""
    widths = tuple(int(w) for w in widths)
    if not widths or min(widths) < 1 or image_size >> len(widths) < 1:
        raise ImgclfError(f"photo-fast needs 1 to log2(image size) positive widths, got {list(widths)} "
                          f"at {image_size}px.")
    modules: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Sequential(nn.Conv2d(in_channels, widths[0] // 2, 3, padding=1, bias=False),
                           nn.BatchNorm2d(widths[0] // 2), nn.GELU()))
    cin = widths[0] // 2
    for i, cout in enumerate(widths, start=1):
        modules[f"stage{i}"] = _Stage(cin, cout)
        cin = cout
    modules["pool"] = nn.AdaptiveMaxPool2d(1)
    modules["flatten"] = nn.Flatten()  # (B, C, 1, 1) -> (B, C)
    modules["scale"] = _Scale(0.125)
    return Classifier(nn.Sequential(modules), cin, num_classes, _scratch_input(image_size, in_channels),
                      f"body.stage{len(widths)}")
