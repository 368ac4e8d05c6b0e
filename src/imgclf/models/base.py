"""The one model contract every registered model keeps, so later commands need no per-model code."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from imgclf.data.transforms import Preprocess
from imgclf.errors import ImgclfError


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: size (H, W), channels, and mean/std (None: use the data's own statistics)."""

    size: tuple[int, int]
    channels: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def preprocess(self, data: Preprocess | None = None) -> Preprocess:
        """The preprocessing for this model: its size and channels, its mean/std or else the data's."""
        if self.mean is not None and self.std is not None:
            return Preprocess(self.size, self.channels, self.mean, self.std)
        if data is None:
            raise ImgclfError("this model normalizes with the data's mean/std; pass the data's preprocessing.")
        return data.with_(channels=self.channels).with_(size=self.size)


class Classifier(nn.Module):
    """body: images (B, C, H, W) -> features (B, F); head: features -> logits (B, num_classes).

    Logits, not probabilities: softmax is applied at inference (predict, serve, evaluate).
    """

    def __init__(self, body: nn.Module, num_features: int, num_classes: int, input_spec: InputSpec,
                 target_layer: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = body
        self.num_features = num_features
        self.dropout = dropout
        self.input_spec = input_spec
        self.target_layer = target_layer  # module name (e.g. 'body.layer4') Grad-CAM hooks by default
        self.open_modules: tuple[str, ...] = ()  # body modules that stages() splits into their children
        self.config: dict = {}  # how create_model built it, so a saved model can be rebuilt
        self.reset_classifier(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_features): everything before the final linear layer."""
        return self.body(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialized head for `num_classes` classes (transfer learning)."""
        if num_classes < 1:
            raise ImgclfError(f"num_classes must be at least 1, got {num_classes}.")
        self.num_classes = num_classes
        linear = nn.Linear(self.num_features, num_classes)
        self.head = nn.Sequential(nn.Dropout(self.dropout), linear) if self.dropout else linear

    def stages(self) -> list[list[nn.Parameter]]:
        """The body's parameters in blocks from the input on: its children, with top-level nn.Sequential
        containers and the modules named in `open_modules` opened into their own children."""
        blocks: list[list[nn.Parameter]] = []

        def visit(module: nn.Module, prefix: str) -> None:
            own = list(module.parameters(recurse=False))  # e.g. a ViT's class token
            if own:
                blocks.append(own)
            for name, child in module.named_children():
                if f"{prefix}{name}" in self.open_modules or (not prefix and isinstance(child, nn.Sequential)):
                    visit(child, f"{prefix}{name}.")
                elif any(True for _ in child.parameters()):
                    blocks.append(list(child.parameters()))

        visit(self.body, "")
        return blocks

    def freeze(self, what: str | int = "backbone") -> None:
        """Freeze 'backbone' (the whole body), 'none', or the first n stages; the head stays trainable."""
        for p in self.parameters():
            p.requires_grad_(True)
        if what == "none":
            return
        if what == "backbone":
            frozen = list(self.body.parameters())
        elif str(what).isdigit():
            frozen = [p for block in self.stages()[: int(what)] for p in block]
        else:
            raise ImgclfError(f"freeze must be 'backbone', 'none' or a number of stages, got {what!r}.")
        for p in frozen:
            p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> Classifier:
        """As nn.Module.train, but frozen batch norm layers stay in eval mode (their statistics frozen too)."""
        super().train(mode)
        for module in self.modules():
            params = list(module.parameters())
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and params and not any(
                    p.requires_grad for p in params):
                module.eval()
        return self

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
