"""Requests/s and latency of `imgclf serve`, one change at a time, at 1, 16 and 64 concurrent clients.

    python benchmarks/serving.py RUN [--seconds 10] [--data-dir DIR] [--workers 2]

Starts `imgclf serve RUN` on a loopback port once per configuration: with PyTorch computing the predictions,
batching off (--max-batch 1), batching on (the defaults), then the image sent as the request body
(Content-Type: image/png) instead of a multipart upload; then with onnxruntime (the run's ONNX export, made
first if the run has none), then --workers processes. Each is driven with wrk (one thread, apt-get install
wrk) posting 100 different 28x28 MNIST test digits as PNGs in turn, for --seconds per concurrency level; wrk
shares the machine's cores with the server. Prints a markdown table and each configuration's throughput
against batching off.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from imgclf.data import load_dataset
from imgclf.export import export_run
from imgclf.rundir import read_meta
from imgclf.runtime import onnx_twin

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (1, 16, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "mnist"))
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="of the last configuration")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("this benchmark drives the server with wrk: apt-get install wrk")
    images = load_dataset("mnist", args.data_dir).splits["test"].images[:100, 0].numpy()
    pngs = [_png(a) for a in images]
    if onnx_twin(args.run, read_meta(args.run / "model.json", "train it again")) is None:
        export_run(args.run, "onnx", out=args.run)
    torch = ["--runtime", "torch"]
    configurations = [("batching off", [*torch, "--max-batch", "1"], "multipart"),
                      ("batching on", torch, "multipart"), ("+ image body", torch, "raw"), ("+ onnxruntime", [], "raw"),
                      (f"+ {args.workers} workers", ["--workers", str(args.workers)], "raw")]
    rows = {}
    for name, flags, body in configurations:
        with _server(args.run, flags) as url:
            for clients in LEVELS:
                rows[name, clients] = _load(url, pngs, body, clients, args.seconds)
    print("| clients | configuration | requests/s | x batching off | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    for clients in LEVELS:
        for name, _, _ in configurations:
            r, off = rows[name, clients], rows["batching off", clients]
            print(f"| {clients} | {name} | {r['rps']:,.0f} | {r['rps'] / off['rps']:.2f} | {r['p50']:.1f} | "
                  f"{r['p99']:.1f} | {r['errors']} |")


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


class _server:
    """`imgclf serve` in a subprocess, ready when entered, stopped with SIGTERM when left."""

    def __init__(self, run: Path, flags: list[str]) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.command = [sys.executable, "-m", "imgclf", "serve", str(run), "--port", str(self.port),
                        "--feedback-db", str(Path(tempfile.mkdtemp()) / "f.db"), "--max-queue", "4096", *flags]

    def __enter__(self) -> str:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{self.port}"
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health/ready").status_code == 200:
                    return url
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("the server did not become ready")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


LUA = """
local bodies, i = {}, 0
for n = 0, 99 do
  local f = io.open(string.format("%s/%d.body", os.getenv("BODIES"), n), "rb")
  bodies[n] = f:read("*all")
  f:close()
end
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("KIND")
request = function()
  i = (i + 1) % 100
  return wrk.format(nil, "/v1/predict", nil, bodies[i])
end
"""


def _load(url: str, pngs: list[bytes], body: str, clients: int, seconds: float) -> dict:
    """wrk with `clients` connections for `seconds`, the PNGs sent as `body` (multipart or raw): requests/s,
    p50/p99 latency, non-2xx answers."""
    folder = Path(tempfile.mkdtemp())
    for n, data in enumerate(pngs[:100]):
        (folder / f"{n}.body").write_bytes(data if body == "raw" else (
            b"--imgclfbench\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--imgclfbench--\r\n"))
    (folder / "bench.lua").write_text(LUA)
    kind = "image/png" if body == "raw" else "multipart/form-data; boundary=imgclfbench"
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds:.0f}s", "--latency", "-s",
                          str(folder / "bench.lua"), url], env={**os.environ, "BODIES": str(folder), "KIND": kind},
                         capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)$", out, re.MULTILINE))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": _ms(latency["50"]),
            "p99": _ms(latency["99"]), "errors": int(errors.group(1)) if errors else 0}


def _ms(text: str) -> float:
    """wrk's '812.00us', '1.23ms' or '1.50s' in milliseconds."""
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


if __name__ == "__main__":
    main()
