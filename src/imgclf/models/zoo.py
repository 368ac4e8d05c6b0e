"""Torchvision backbones for transfer learning, wrapped in the Classifier contract."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch import nn

from imgclf.errors import ImgclfError
from imgclf.models.base import Classifier, InputSpec
from imgclf.models.registry import register_model
from imgclf.models.weights import backbone_state, load_matching, read_state_dict

log = logging.getLogger(__name__)

# name -> (module Grad-CAM hooks by default, default input side, smallest input side). The sizes are
# torchvision's weight metadata (crop size, min_size; at least 8), kept here so that startup does not
# import torchvision.models (2 s); a test checks them against torchvision. A ViT from scratch takes
# any multiple of its 16-pixel patch.
BACKBONES = {
    "alexnet": ("features", 224, 63), "vgg11_bn": ("features", 224, 32), "vgg16_bn": ("features", 224, 32),
    "resnet18": ("layer4", 224, 8), "resnet34": ("layer4", 224, 8), "resnet50": ("layer4", 224, 8),
    "densenet121": ("features", 224, 29), "efficientnet_b0": ("features", 224, 8),
    "mobilenet_v3_small": ("features", 224, 8), "mobilenet_v3_large": ("features", 224, 8),
    "inception_v3": ("Mixed_7c", 299, 75), "convnext_tiny": ("features", 224, 32), "vit_b_16": ("encoder", 224, 16),
}


def build_backbone(arch: str, num_classes: int, in_channels: int, image_size: int, pretrained: bool = False,
                   weights: str | Path | None = None) -> Classifier:
    """A torchvision model, its final linear layer replaced by a new head; first conv adapted to in_channels."""
    from torchvision import models as tvm

    default = tvm.get_model_weights(arch).DEFAULT
    with_weights = pretrained or weights is not None
    if with_weights and in_channels not in (1, 3):
        raise ImgclfError(f"pretrained {arch} takes 1 (gray) or 3 (RGB) input channels, not {in_channels}.")
    net = _torchvision_model(arch, default if pretrained else None, with_weights, image_size)
    if weights is not None:
        hint = (f"Pass a state dict of torchvision's {arch} (torch.save(model.state_dict(), PATH)), or set "
                "model.name to the architecture the file was saved from; to go on training an imgclf run on the same "
                "classes, use model.init RUN instead.")
        load_matching(net, backbone_state(read_state_dict(weights)), weights,
                      replaceable=(_last_linear(net)[0] + ".",), hint=hint)
    if arch == "inception_v3":  # the auxiliary classifier only exists to load the pretrained file
        net.AuxLogits, net.aux_logits = None, False
    head, linear = _last_linear(net)
    net.set_submodule(head, nn.Identity())
    spec = InputSpec((image_size, image_size), in_channels)  # from scratch: the data's own mean/std
    if with_weights:  # pretrained weights expect the normalization they were trained with
        mean, std = ((0.5,) * 3, (0.5,) * 3) if arch == "inception_v3" else (
            tuple(default.transforms().mean), tuple(default.transforms().std))
        spec = InputSpec((image_size, image_size), 3, mean, std)
        if in_channels == 1:
            spec = _gray_first_conv(net, spec)
    elif in_channels != 3:
        _replace_first_conv(net, in_channels)
    model = Classifier(net, linear.in_features, num_classes, spec, f"body.{BACKBONES[arch][0]}")
    if arch == "vit_b_16":  # its 12 encoder blocks sit inside a non-Sequential module
        model.open_modules = ("encoder", "encoder.layers")
    return model


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
    from torchvision import models as tvm

    if weights is None:
        return tvm.get_model(arch, weights=None, **kwargs)
    try:
        return tvm.get_model(arch, weights=weights, **kwargs)
    except (OSError, RuntimeError) as err:  # no network, or a corrupt download in the cache
        raise ImgclfError(f"could not get pretrained weights for {arch} ({err}). Without internet, fetch "
                          f"{weights.url} elsewhere and pass its path as the model's weights "
                          f"(--model.weights PATH), or put it in {Path(torch.hub.get_dir()) / 'checkpoints'}.") from err


def _last_linear(net: nn.Module) -> tuple[str, nn.Linear]:
    """The final classifier layer: in torchvision models, the last nn.Linear registered."""
    return [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)][-1]


def _replace_first_conv(net: nn.Module, in_channels: int) -> tuple[nn.Conv2d, nn.Conv2d]:
    """Swap the first conv for a fresh one taking `in_channels`; returns (old, new)."""
    name, old = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                    old.groups, bias=True)
    net.set_submodule(name, new)
    return old, new


def _gray_first_conv(net: nn.Module, rgb: InputSpec) -> InputSpec:
    """Fold the RGB filters into one gray filter so that, on a gray image normalized with the averaged
    mean/std, the first conv gives what the RGB model gives on that image repeated on three channels
    and normalized per channel (exact away from the zero-padded border)."""
    mean, std = torch.tensor(rgb.mean), torch.tensor(rgb.std)
    gray_mean, gray_std = float(mean.mean()), float(std.mean())
    old, new = _replace_first_conv(net, 1)
    with torch.no_grad():
        w = old.weight  # (out, 3, k, k)
        new.weight.copy_((w * (gray_std / std).view(1, 3, 1, 1)).sum(dim=1, keepdim=True))
        shift = (w * ((gray_mean - mean) / std).view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
        new.bias.copy_(shift + (old.bias if old.bias is not None else 0))
    return InputSpec(rgb.size, 1, (gray_mean,), (gray_std,))


for _arch, (_, _size, _smallest) in BACKBONES.items():
    register_model(_arch, default_size=_size, min_size=_smallest, pretrained=True,
                   description=f"torchvision {_arch}, for transfer learning")(functools.partial(build_backbone, _arch))
