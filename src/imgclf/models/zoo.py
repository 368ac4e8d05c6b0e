"""Torchvision backbones for transfer learning, wrapped in the Classifier contract."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from imgclf.errors import ImgclfError
from imgclf.models.base import Classifier, InputSpec
from imgclf.models.registry import register_model
from imgclf.models.weights import load_matching, read_state_dict

log = logging.getLogger(__name__)

# name -> the module Grad-CAM hooks by default (the last convolutional stage; a ViT's encoder output)
BACKBONES = {
    "alexnet": "features", "vgg11_bn": "features", "vgg16_bn": "features",
    "resnet18": "layer4", "resnet34": "layer4", "resnet50": "layer4", "densenet121": "features",
    "efficientnet_b0": "features", "mobilenet_v3_small": "features", "mobilenet_v3_large": "features",
    "inception_v3": "Mixed_7c", "convnext_tiny": "features", "vit_b_16": "encoder",
}


def build_backbone(arch: str, num_classes: int, in_channels: int, image_size: int, pretrained: bool = False,
                   weights: str | Path | None = None) -> Classifier:
    """A torchvision model, its final linear layer replaced by a new head; first conv adapted to in_channels."""
    default = tvm.get_model_weights(arch).DEFAULT
    with_weights = pretrained or weights is not None
    net = _torchvision_model(arch, default if pretrained else None, with_weights, image_size)
    if weights is not None:
        load_matching(net, read_state_dict(weights), weights, replaceable=(_last_linear(net)[0] + ".",))
    if arch == "inception_v3":  # the auxiliary classifier only exists to load the pretrained file
        net.AuxLogits, net.aux_logits = None, False
    head, linear = _last_linear(net)
    net.set_submodule(head, nn.Identity())
    if in_channels != 3:
        _adapt_first_conv(net, in_channels)
    mean, std = (None, None)
    if with_weights:  # pretrained weights expect the normalization they were trained with
        mean, std = ((0.5,) * 3, (0.5,) * 3) if arch == "inception_v3" else (
            tuple(default.transforms().mean), tuple(default.transforms().std))
        if in_channels == 1:
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    spec = InputSpec((image_size, image_size), in_channels, mean, std)
    return Classifier(net, linear.in_features, num_classes, spec, f"body.{BACKBONES[arch]}")


def _torchvision_model(arch: str, weights, with_weights: bool, image_size: int) -> nn.Module:
    kwargs: dict = {}
    if arch == "inception_v3":  # transform_input off: imgclf normalizes with mean/std 0.5 instead
        kwargs = {"aux_logits": with_weights, "transform_input": False, "init_weights": not with_weights}
    if arch == "vit_b_16":
        if with_weights and image_size != 224:
            raise ImgclfError(f"vit_b_16's pretrained weights need 224x224 inputs, got {image_size}; "
                              "use image size 224, or train from scratch.")
        if image_size % 16:
            raise ImgclfError(f"vit_b_16 needs an image size divisible by 16 (its patch size), got {image_size}.")
        kwargs["image_size"] = image_size
    try:
        return tvm.get_model(arch, weights=weights, **kwargs)
    except (OSError, RuntimeError) as err:  # no network, or a corrupt download in the cache
        raise ImgclfError(f"could not get pretrained weights for {arch} ({err}). Without internet, fetch "
                          f"{weights.url} elsewhere and pass it with --weights PATH, or put it in "
                          f"{Path(torch.hub.get_dir()) / 'checkpoints'}.") from err


def _last_linear(net: nn.Module) -> tuple[str, nn.Linear]:
    """The final classifier layer: in torchvision models, the last nn.Linear registered."""
    return [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)][-1]


def _adapt_first_conv(net: nn.Module, in_channels: int) -> None:
    """Replace the first conv for `in_channels`; pretrained RGB filters are summed, so a gray image
    gives exactly what the RGB model gave for that image repeated on three channels."""
    name, old = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                    old.groups, old.bias is not None)
    with torch.no_grad():
        new.weight.copy_(old.weight.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    net.set_submodule(name, new)


def _register_all() -> None:
    for arch in BACKBONES:
        meta = tvm.get_model_weights(arch).DEFAULT
        crop = meta.transforms().crop_size[0]
        low = 16 if arch == "vit_b_16" else meta.meta["min_size"][0]  # from scratch a ViT takes any multiple of 16
        params = meta.meta["num_params"]
        register_model(arch, default_size=crop, min_size=max(low, 8), pretrained=True,
                       description=f"torchvision {arch}, {params / 1e6:.1f}M params with its ImageNet head")(
            functools.partial(build_backbone, arch))


_register_all()
