"""`imgclf export`: a run's model as ONNX (optionally int8) or TorchScript, checked against PyTorch on real
test images before it is kept.

The file goes next to `<file>.json`: classes, the preprocessing its input needs, the temperature, and
provenance (source run and the sha256 of both weight files)."""

from __future__ import annotations

import logging
import tempfile
import warnings
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgclf import __version__
from imgclf.data import Preprocess, Split, batches
from imgclf.errors import ImgclfError, first_line
from imgclf.evaluate.evaluation import eval_data, run_tracker, timings
from imgclf.evaluate.metrics import softmax
from imgclf.models import Classifier
from imgclf.predict import predict_logits
from imgclf.rundir import atomic_write, load_model, preprocess_of, run_folder, sha256, write_meta
from imgclf.runtime import ExportedModel

log = logging.getLogger(__name__)
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
QUANTIZE = ("int8", "int8-dynamic")  # static (calibrated on training images) or dynamic int8, ONNX only
MIN_OPSET = 18  # the oldest opset torch's ONNX exporter writes


class ExportFailed(ImgclfError):
    """An export that could not be made or kept: `reason` says why, the message adds what to do about it."""

    def __init__(self, reason: str, advice: str) -> None:
        super().__init__(f"{reason}; {advice}")
        self.reason = reason


class Deployable(nn.Module):
    """The classifier as shipped: (B, C, H, W) -> logits, normalizing inside when `normalize` (then the
    input is the image scaled to [0, 1], which is all a consumer has to do besides resizing)."""

    def __init__(self, model: Classifier, preprocess: Preprocess, normalize: bool) -> None:
        super().__init__()
        self.model, self.normalize = model, normalize
        if normalize:
            self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(preprocess.std).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            images = (images - self.mean) / self.std
        return self.model(images)


def export_run(run: str | Path, fmt: str = "onnx", *, quantize: str | None = None, opset: int = MIN_OPSET,
               embed_normalization: bool = False, out: str | Path | None = None, data_dir: str | Path | None = None,
               samples: int = 256, tolerance: float = 1e-4, max_drop: float = 0.01) -> tuple[dict, Path]:
    """Export with a dynamic batch dimension, check parity on `samples` test images at once and on one
    alone (max |p_export - p_torch| <= tolerance), and for int8 the accuracy on the whole test split
    (drop <= max_drop); returns the metadata as written and the file."""
    _check_options(fmt, quantize, opset)
    model, meta = load_model(run)
    folder = run_folder(run)
    pre = preprocess_of(meta)
    deployable = Deployable(model, pre, embed_normalization).eval()
    shipped = pre.with_(mean=(0.0,) * pre.channels, std=(1.0,) * pre.channels) if embed_normalization else pre
    test = eval_data(folder, meta, data_dir=data_dir)
    out = Path(out) if out else folder
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"model{'.' + quantize if quantize else ''}{FORMATS[fmt]}"
    example = _images(test.split, shipped, max(2, min(samples, len(test.split))))  # batch 1 would be fixed
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        fp32 = Path(scratch) / f"fp32{FORMATS[fmt]}"
        export_module(fmt, deployable, example, fp32, opset)
        report = {"parity": _parity(deployable, ExportedModel(fp32), example, tolerance)}
        _parity(deployable, ExportedModel(fp32), example[:1], tolerance)  # the batch dimension is really dynamic
        if quantize:
            quantized = Path(scratch) / "int8.onnx"
            try:
                _quantize(fp32, quantized, quantize, folder, meta, shipped, data_dir)
            except ImgclfError:
                raise
            except Exception as err:  # onnxruntime's quantizer raises plain exceptions
                raise ExportFailed(f"int8 quantization failed: {first_line(err)}",
                                   "export without --quantize, or try --quantize int8-dynamic.") from err
            report["int8"] = _int8_report(fp32, quantized, test.split, test.targets, shipped, max_drop)
            fp32 = quantized
        atomic_write(path, lambda tmp: tmp.write_bytes(fp32.read_bytes()))
    info = {"format": fmt, "quantize": quantize, "opset": opset if fmt == "onnx" else None,
            "normalization_embedded": embed_normalization,
            "input": {"name": "images", "shape": ["batch", pre.channels, *pre.size],
                      "dtype": "float32", "range": "[0, 1]" if embed_normalization else "normalized"},
            "output": {"name": "logits", "probabilities": "softmax(logits / temperature)"},
            "classes": meta["classes"], "preprocess": shipped.to_dict(), "preprocess_of_source": pre.to_dict(),
            "temperature": meta.get("temperature", 1.0), "calibration": meta.get("calibration"),
            "architecture": meta["architecture"],
            "dataset": meta.get("dataset"), "source": {"run": str(folder.resolve()), "sha256": meta["sha256"]},
            "sha256": sha256(path), "exported": datetime.now(timezone.utc).isoformat(),
            "versions": {"imgclf": __version__, "torch": torch.__version__, **_runtime_versions(fmt)}, **report}
    meta_path = path.with_name(path.name + ".json")
    written = write_meta(meta_path, info)
    tracker = run_tracker(folder)[0]  # a tracked run keeps its exports beside its other files
    tracker.files([path, meta_path])
    tracker.close()
    return written, path


def _check_options(fmt: str, quantize: str | None, opset: int) -> None:
    if fmt not in FORMATS:
        raise ImgclfError(f"unknown export format {fmt!r}; choose {' or '.join(FORMATS)}.")
    if quantize is not None and (quantize not in QUANTIZE or fmt != "onnx"):
        raise ImgclfError(f"--quantize {quantize} is not available for {fmt}; use --format onnx with "
                          f"--quantize {' or '.join(QUANTIZE)}.")
    if fmt == "onnx" and opset < MIN_OPSET:
        raise ImgclfError(f"opset {opset} is too old: torch's ONNX exporter writes opset {MIN_OPSET} or newer; "
                          f"use --opset {MIN_OPSET} (onnxruntime 1.14 and later run it).")


def _images(split: Split, preprocess: Preprocess, count: int) -> torch.Tensor:
    """The first `count` images of a split, as the exported model takes them."""
    return next(iter(batches(split, preprocess, count)))[0]


def export_module(fmt: str, model: nn.Module, example: torch.Tensor, path: Path, opset: int = MIN_OPSET) -> None:
    """Export `model` traced on `example` (batch dimension dynamic); a model the format cannot represent
    gets one clear error."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
            if fmt == "torchscript":
                torch.jit.save(torch.jit.trace(model, example), str(path))  # deprecated upstream, still supported
            else:
                torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset,
                                  input_names=["images"], output_names=["logits"],
                                  dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
                                  external_data=False, verbose=False, report=False)
    except Exception as err:  # exporters raise many types; the first line names the operator or reason
        raise ImgclfError(f"this model cannot be exported to {fmt}: {first_line(err)}") from err


def _parity(reference: nn.Module, exported: ExportedModel, images: torch.Tensor, tolerance: float) -> dict:
    """Probabilities of the export against PyTorch's on the same images; an error beyond `tolerance`."""
    with torch.no_grad():
        expected = softmax(reference(images).numpy())
    got = softmax(exported(images).numpy())
    result = {"images": len(images), "max_abs_diff": float(np.abs(got - expected).max()),
              "top1_agreement": float((got.argmax(1) == expected.argmax(1)).mean()), "tolerance": tolerance}
    log.info("parity on %d test images: max |p - p_torch| %.2e, top-1 agreement %.4f", len(images),
             result["max_abs_diff"], result["top1_agreement"])
    if result["max_abs_diff"] > tolerance:
        raise ExportFailed(f"the export disagrees with PyTorch: probabilities differ by up to "
                           f"{result['max_abs_diff']:.2e} (tolerance {tolerance:g}) on {len(images)} test images",
                           "nothing was written.")
    return result


def _quantize(fp32: Path, target: Path, mode: str, folder: Path, meta: dict, preprocess: Preprocess,
              data_dir: str | Path | None, calibration: int = 512) -> None:
    """int8 weights (dynamic), or int8 weights and activations calibrated on training images (static, QDQ)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_name("prepared.onnx")
    quant_pre_process(str(fp32), str(prepared))
    if mode == "int8-dynamic":
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
        return
    train = eval_data(folder, meta, data_dir=data_dir, split="train").split  # never the test images
    index = np.random.default_rng(0).permutation(len(train))[:calibration]
    chunks = [x.numpy() for x, _ in batches(train.take(index), preprocess, 32)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter({"images": c} for c in chunks)

        def get_next(self) -> dict | None:
            return next(self.items, None)

    quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)  # S8S8: measured fastest here


def _int8_report(fp32: Path, int8: Path, split: Split, targets: np.ndarray, preprocess: Preprocess,
                 max_drop: float) -> dict:
    """Test accuracy, file size and throughput of the int8 model against the fp32 one (both in onnxruntime)."""
    result = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        runner = ExportedModel(path)
        accuracy = float((predict_logits(runner, split, preprocess, torch.device("cpu")).argmax(1) == targets).mean())
        batch = _images(split, preprocess, min(256, len(split)))
        result[name] = {"accuracy": accuracy, "mb": round(path.stat().st_size / 2**20, 3),
                        "images_per_second": len(batch) / np.median(timings(runner, batch, 3)) * 1000}
    result["accuracy_change"] = result["int8"]["accuracy"] - result["fp32"]["accuracy"]
    log.info("int8: test accuracy %.4f -> %.4f, %.2f MiB -> %.2f MiB", result["fp32"]["accuracy"],
             result["int8"]["accuracy"], result["fp32"]["mb"], result["int8"]["mb"])
    if -result["accuracy_change"] > max_drop:
        raise ExportFailed(f"int8 quantization changed test accuracy by {result['accuracy_change'] * 100:+.2f} "
                           f"points (the least accepted: {-max_drop * 100:+.2f})",
                           "nothing was written. Try --quantize int8-dynamic, or keep fp32.")
    return result


def _runtime_versions(fmt: str) -> dict:
    return {"onnx": version("onnx"), "onnxruntime": version("onnxruntime")} if fmt == "onnx" else {}
