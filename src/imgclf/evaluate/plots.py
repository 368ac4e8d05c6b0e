"""Figures. The only module that imports matplotlib (headless: the Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def lr_find_plot(lrs: list[float], losses: list[float], suggestion: float, path: Path) -> Path:
    """Smoothed training loss against the learning rate (log scale), the suggested rate marked."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(lrs, losses)
    ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested lr {suggestion:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title="learning-rate range test")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
