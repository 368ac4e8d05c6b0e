"""Which registered models export to ONNX and TorchScript, with the parity of each against PyTorch.

    python benchmarks/export_coverage.py ['resnet*']

Every model is built untrained at its default input size (1 channel for the custom CNNs, 3 for the
torchvision backbones), exported with imgclf's exporter, run in onnxruntime / torch.jit on 4 random
images, and compared: max |p_export - p_torch| over the softmax outputs. Takes a few minutes.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imgclf.data import Preprocess
from imgclf.errors import ImgclfError
from imgclf.export import FORMATS, Deployable, export_module
from imgclf.models import create_model, list_models, model_entry
from imgclf.runtime import ExportedModel


def main() -> None:
    pattern = sys.argv[1] if len(sys.argv) > 1 else "*"
    print("| model | input | " + " | ".join(f"{f} (max prob. diff, s)" for f in FORMATS) + " |")
    print("|---|---|" + "---|" * len(FORMATS))
    with tempfile.TemporaryDirectory() as scratch:
        for name in list_models(pattern):
            size = model_entry(name).default_size
            channels = 1 if name.startswith(("mnist", "paper", "cnn")) else 3
            model = create_model(name, 10, channels, size).eval()
            pre = Preprocess((size, size), channels, (0.5,) * channels, (0.25,) * channels)
            deployable = Deployable(model, pre, normalize=True).eval()
            images = torch.rand(4, channels, size, size, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                expected = torch.softmax(deployable(images), 1).numpy()
            cells = []
            for fmt, suffix in FORMATS.items():
                path = Path(scratch) / f"{name}{suffix}"
                start = time.monotonic()
                try:
                    export_module(fmt, deployable, images, path)
                    got = torch.softmax(ExportedModel(path)(images), 1).numpy()
                    cells.append(f"{np.abs(got - expected).max():.1e} ({time.monotonic() - start:.0f} s)")
                except ImgclfError as err:
                    cells.append(f"fails: {str(err)[:120]}")
                path.unlink(missing_ok=True)
            print(f"| {name} | {channels}x{size}x{size} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
