"""Requests/s and latency of `imgclf serve` with micro-batching on and off, at 1, 16 and 64 concurrent clients.

    python benchmarks/serving.py RUN [--seconds 10] [--data-dir DIR]

Starts `imgclf serve RUN` twice on a loopback port (--max-batch 64 --max-wait-ms 2, then --max-batch 1
--max-wait-ms 0: the same server, batching off), and drives each with asyncio httpx clients posting
28x28 MNIST test digits as PNG for --seconds per concurrency level. The clients share the machine's
cores with the server, as they would on one box. Prints a markdown table and the batching-on/off ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import io
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

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (1, 16, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "mnist"))
    args = parser.parse_args()
    images = load_dataset("mnist", args.data_dir).splits["test"].images[:500, 0].numpy()
    pngs = [_png(a) for a in images]
    rows = {}
    for mode, flags in (("on", ["--max-batch", "64", "--max-wait-ms", "2"]),
                        ("off", ["--max-batch", "1", "--max-wait-ms", "0"])):
        with _server(args.run, flags) as url:
            for clients in LEVELS:
                rows[mode, clients] = asyncio.run(_load(url, pngs, clients, args.seconds))
    print("| clients | batching | requests/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    for clients in LEVELS:
        for mode in ("on", "off"):
            r = rows[mode, clients]
            print(f"| {clients} | {mode} | {r['rps']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} |")
    for clients in LEVELS:
        print(f"\n{clients} clients: batching on / off throughput = "
              f"{rows['on', clients]['rps'] / rows['off', clients]['rps']:.2f}x", end="")
    print()


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


async def _load(url: str, pngs: list[bytes], clients: int, seconds: float) -> dict:
    """`clients` concurrent loops posting images for `seconds`: throughput and latency percentiles."""
    latencies, errors = [], 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        await client.post("/v1/predict", files={"file": pngs[0]})  # connections and code paths warm
        end = time.perf_counter() + seconds

        async def loop(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < end:
                started = time.perf_counter()
                response = await client.post("/v1/predict", files={"file": pngs[i % len(pngs)]})
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
                i += clients

        started = time.perf_counter()
        await asyncio.gather(*(loop(k) for k in range(clients)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"rps": len(latencies) / elapsed, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "errors": errors}


if __name__ == "__main__":
    main()
