"""`imgclf benchmark`: one model in every runtime format, side by side on this machine: size, test accuracy,
latency, throughput, and the share of the machine's measured matmul peak it reaches."""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from pathlib import Path

import torch

from imgclf.errors import ImgclfError
from imgclf.evaluate.evaluation import efficiency, eval_data
from imgclf.export import export_run
from imgclf.predict import predict_logits
from imgclf.rundir import load_model, preprocess_of, run_folder
from imgclf.runtime import ExportedModel

log = logging.getLogger(__name__)


def peak_flops(size: int = 2048, repeats: int = 10) -> float:
    """Measured float32 matmul FLOP/s with torch's current threads: the best of `repeats` (size x size) products."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def benchmark_formats(run: str | Path, *, data_dir: str | Path | None = None, runs: int = 100, batch: int = 256,
                      tolerance: float = 1e-4, max_drop: float = 0.01) -> dict:
    """Every format of the run's model on its test split: PyTorch (plain and channels-last), TorchScript,
    ONNX Runtime fp32 and int8 (static). Exports go to a temporary folder, each checked as `imgclf export`
    checks it (parity within `tolerance`, int8 losing at most `max_drop` accuracy); a format that fails is a
    row with `failed` set to the reason, and the other formats are still measured."""
    model, meta = load_model(run)
    folder = run_folder(run)
    test = eval_data(folder, meta, data_dir=data_dir)
    peak = peak_flops()
    contenders = {"pytorch": model, "pytorch channels_last": _ChannelsLast(copy.deepcopy(model)).eval()}
    with tempfile.TemporaryDirectory() as scratch:
        for name, fmt, quantize in (("torchscript", "torchscript", None), ("onnxruntime fp32", "onnx", None),
                                    ("onnxruntime int8", "onnx", "int8")):
            log.info("exporting to %s", name)
            try:
                _, path = export_run(run, fmt, quantize=quantize, out=scratch, data_dir=data_dir,
                                     tolerance=tolerance, max_drop=max_drop)
                contenders[name] = ExportedModel(path)
            except ImgclfError as err:  # this format fails; the others are still worth measuring
                contenders[name] = getattr(err, "reason", str(err))  # the reason, without export's own advice
                log.warning("%s failed: %s", name, contenders[name])
        rows = [{"format": name, "failed": runner} if isinstance(runner, str) else
                _measure(name, runner, meta, folder, test, runs, batch) for name, runner in contenders.items()]
    base = rows[0]["images_per_second"]
    measured = [row for row in rows if not row["failed"]]
    for row in measured:
        row["speedup"] = row["images_per_second"] / base
    # float32 rows against the float32 matmul; if a format beat it, the matmul was not this machine's peak
    fastest = max((r for r in measured if r["precision"] == "float32"), key=lambda r: r["flops_per_second"])
    peak_from = "matmul" if fastest["flops_per_second"] <= peak else fastest["format"]
    top = max(peak, fastest["flops_per_second"])
    for row in measured:
        row["peak_fraction"] = row["flops_per_second"] / top if row["precision"] == "float32" else None
    return {"run": str(folder), "model": meta["architecture"]["name"], "images": len(test.targets),
            "flops_per_image": rows[0]["flops"], "matmul_gflops": peak / 1e9, "peak_gflops": top / 1e9,
            "peak_from": peak_from, "threads": torch.get_num_threads(), "batch": batch, "rows": rows,
            "failed": [row["format"] for row in rows if row["failed"]]}


class _ChannelsLast(torch.nn.Module):
    """The model in channels-last memory format, fed channels-last inputs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


def _measure(name: str, runner, meta: dict, folder: Path, test, runs: int, batch: int) -> dict:
    """One row: file size, test accuracy, latency at batch 1, throughput at `batch` and FLOP/s."""
    log.info("timing %s", name)
    cpu = torch.device("cpu")
    with torch.inference_mode():
        logits = predict_logits(runner, test.split, preprocess_of(meta), cpu)
    speed = efficiency(runner, meta, folder, test.split, cpu, runs, batch)
    throughput = speed["throughput"]["images_per_second"]
    return {"format": name, "failed": None, "precision": "int8" if "int8" in name else "float32",
            "file_mb": speed["file_mb"], "accuracy": float((logits.argmax(1) == test.targets).mean()),
            "p50_ms": speed["latency_ms"]["p50"], "p99_ms": speed["latency_ms"]["p99"], "flops": speed["flops"],
            "images_per_second": throughput, "flops_per_second": speed["flops"] * throughput}
