"""Time to 99.0% MNIST test accuracy: the common PyTorch MNIST example vs `imgclf train` (fast recipe).

Both run as separate processes, back to back, and are timed from process launch (imports, data
loading and evaluation included) until the test accuracy first reaches the target.

    python benchmarks/time_to_accuracy.py --data-dir ../shared/datasets/mnist [--baseline-epochs 5]

The baseline is written from the description of the widely used PyTorch MNIST example: conv 32 ->
conv 64 -> max-pool -> dropout 0.25 -> fc 128 -> dropout 0.5 -> fc 10, Adadelta lr 1.0, StepLR
gamma 0.7, batch 64, torchvision's MNIST dataset with ToTensor + Normalize through a DataLoader,
evaluated on the test set after every epoch.
"""

from __future__ import annotations

import argparse
import gzip
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.99
ROOT = Path(__file__).resolve().parents[1]


def baseline(root: str, epochs: int, launched: float) -> None:
    """The example's training script; prints one line per epoch with seconds since launch."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torchvision import datasets, transforms

    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Dropout(0.25), nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(128, 10))
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_loader = torch.utils.data.DataLoader(datasets.MNIST(root, train=True, transform=transform),
                                               batch_size=64, shuffle=True)
    test_loader = torch.utils.data.DataLoader(datasets.MNIST(root, train=False, transform=transform),
                                              batch_size=1000)
    optimizer = torch.optim.Adadelta(net.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    for epoch in range(1, epochs + 1):
        net.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
        scheduler.step()
        net.eval()
        with torch.no_grad():
            correct = sum(int((net(x).argmax(1) == y).sum()) for x, y in test_loader)
        print(f"epoch {epoch} test_acc {correct / 10000:.4f} seconds {time.time() - launched:.1f}", flush=True)


def run_baseline(data_dir: Path, epochs: int) -> tuple[float | None, list[str]]:
    """Seconds from launch to the first epoch at the target (None if never), and the epoch lines."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "MNIST" / "raw"  # torchvision's layout, files unpacked as its download leaves them
        raw.mkdir(parents=True)
        for gz in data_dir.glob("*-ubyte.gz"):
            with gzip.open(gz) as src, (raw / gz.name.removesuffix(".gz")).open("wb") as dst:
                shutil.copyfileobj(src, dst)
        launched = time.time()
        out = subprocess.run([sys.executable, __file__, "--run-baseline", tmp, "--baseline-epochs", str(epochs),
                              "--launched", str(launched)], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    for line in lines:
        _, _, _, acc, _, seconds = line.split()
        if float(acc) >= TARGET:
            return float(seconds), lines
    return None, lines


def run_imgclf(data_dir: Path, config: Path) -> tuple[float, float, str]:
    """Whole-process seconds, test accuracy, and the command."""
    command = [str(Path(sys.executable).parent / "imgclf"), "train", "--config", str(config),
               "--data-dir", str(data_dir), "--out", tempfile.mkdtemp(), "-q"]
    launched = time.time()
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    seconds = time.time() - launched
    return seconds, float(re.search(r"test accuracy ([0-9.]+)", out)[1]), " ".join(command[1:5])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "datasets" / "mnist")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "mnist-fast.yaml")
    parser.add_argument("--baseline-epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="imgclf runs (the median is reported)")
    parser.add_argument("--run-baseline", help=argparse.SUPPRESS)
    parser.add_argument("--launched", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_baseline:
        baseline(args.run_baseline, args.baseline_epochs, args.launched)
        return
    runs = sorted(run_imgclf(args.data_dir, args.config) for _ in range(args.repeats))
    seconds, accuracy, command = runs[len(runs) // 2]
    base_seconds, lines = run_baseline(args.data_dir, args.baseline_epochs)
    print("baseline (PyTorch MNIST example):")
    print("\n".join(f"  {line}" for line in lines))
    print(f"imgclf ({command}), {args.repeats} runs: "
          + ", ".join(f"{s:.1f}s/{a:.4f}" for s, a, _ in runs))
    print(f"\n| | seconds to {TARGET:.1%} (whole process) | test accuracy |")
    print("|---|---|---|")
    base = f"{base_seconds:.1f}" if base_seconds else f"not reached in {args.baseline_epochs} epochs"
    print(f"| baseline | {base} | {lines[-1].split()[3]} after {len(lines)} epochs |")
    reached = f"{seconds:.1f}" if accuracy >= TARGET else f"not reached ({seconds:.1f}s run)"
    print(f"| imgclf fast recipe | {reached} | {accuracy:.4f} |")
    if base_seconds and accuracy >= TARGET:
        print(f"\nspeed-up: {base_seconds / seconds:.1f}x")


if __name__ == "__main__":
    main()
