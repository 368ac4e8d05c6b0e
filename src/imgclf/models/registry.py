"""One registry of models: register_model, create_model, list_models."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imgclf.errors import ImgclfError
from imgclf.models.base import Classifier
from imgclf.models.weights import backbone_state, load_matching, read_state_dict


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[..., Classifier]  # build(num_classes, in_channels, image_size, pretrained, **kwargs)
    default_size: int  # input side the model is designed for
    min_size: int  # smallest input side it accepts
    pretrained: bool  # whether pretrained weights exist
    description: str


_MODELS: dict[str, ModelEntry] = {}
_COMMON = ("num_classes", "in_channels", "image_size", "pretrained", "weights")


def register_model(name: str, *, default_size: int, min_size: int = 1, pretrained: bool = False,
                   description: str = "") -> Callable:
    """Decorator adding a model builder under `name`; registering a name twice is an error."""
    def add(build: Callable[..., Classifier]) -> Callable[..., Classifier]:
        if name in _MODELS:
            raise ImgclfError(f"a model named {name!r} is already registered.")
        _MODELS[name] = ModelEntry(name, build, default_size, min_size, pretrained, description)
        return build
    return add


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_entry(name: str) -> ModelEntry:
    """The registry entry for `name`, or an error suggesting the closest names."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ImgclfError(f"unknown model {name!r}.{hint} `imgclf models list` shows them all.")
    return _MODELS[name]


def model_options(name: str) -> dict[str, object]:
    """The options a registered model takes (its `model.options`), with their defaults."""
    parameters = inspect.signature(model_entry(name).build).parameters.items()
    return {n: p.default for n, p in parameters if p.kind is not p.VAR_KEYWORD and n not in _COMMON}


def create_model(name: str, num_classes: int = 10, in_channels: int | None = None, image_size: int | None = None,
                 *, pretrained: bool = False, weights: str | Path | None = None, freeze: str | int = "none",
                 **kwargs) -> Classifier:
    """Build a registered model; `weights` loads a local file instead of downloading pretrained ones."""
    entry = model_entry(name)
    image_size = image_size or entry.default_size
    if image_size < entry.min_size:
        raise ImgclfError(f"{name} needs inputs of at least {entry.min_size}x{entry.min_size}, "
                          f"got {image_size}; pass a larger image size.")
    if pretrained and not entry.pretrained:
        raise ImgclfError(f"{name} has no pretrained weights; train it from scratch (pretrained=False), or start "
                          "its body from an imgclf run of it (weights=RUN/model.safetensors).")
    options = list(model_options(name))
    unknown = sorted(str(k) for k in set(kwargs) - set(options))
    if unknown:
        raise ImgclfError(f"{name} has no option {', '.join(unknown)}; "
                          f"its options are: {', '.join(options) or 'none'}.")
    try:
        model = entry.build(num_classes=num_classes, in_channels=in_channels or (3 if entry.pretrained else 1),
                            image_size=image_size, pretrained=pretrained, weights=weights, **kwargs)
    except (TypeError, ValueError) as err:  # an option of the wrong type or range, e.g. dropout=2
        raise ImgclfError(f"cannot build {name} with options {kwargs}: {err}.") from err
    if weights is not None and not entry.pretrained:  # imgclf's own models: the body of a run trained elsewhere
        load_matching(model.body, backbone_state(read_state_dict(weights)), weights,
                      hint=f"Pass the model.safetensors of an imgclf run of {name} with the same options and "
                           "channels.")
    model.config = {"name": name, "num_classes": num_classes, "in_channels": model.input_spec.channels,
                    "image_size": image_size, **kwargs}
    model.freeze(freeze)
    return model
