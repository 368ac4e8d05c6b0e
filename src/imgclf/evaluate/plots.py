"""Figures. The only module that imports matplotlib (headless: the Agg backend).

Report figures come back as PNG bytes, for embedding in a standalone HTML page."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from imgclf.evaluate.robustness_report import RobustnessReport

if TYPE_CHECKING:
    from imgclf.evaluate.compare import Ranked


def _png(fig) -> bytes:
    """The figure as PNG bytes (and closed)."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def lr_find_plot(lrs: list[float], losses: list[float], suggestion: float, path: Path) -> Path:
    """Smoothed training loss against the learning rate (log scale), the suggested rate marked."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(lrs, losses)
    ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested lr {suggestion:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title="learning-rate range test")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)  # the format follows the file name
    plt.close(fig)
    return path


def training_curves(history: list[dict]) -> bytes:
    """Loss and accuracy per epoch, training and validation, from metrics.csv rows."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    epochs = [float(r["epoch"]) for r in history]
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for split in ("train", "val"):
            values = [r.get(f"{split}_{metric}") for r in history]
            if any(v is not None for v in values):  # a missing value is a gap in the line
                ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o", label=split)
        ax.set(xlabel="epoch", ylabel="accuracy" if metric == "acc" else "cross-entropy loss", title=metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return _png(fig)


def confusion_plot(matrix: list[list[float]], classes: list[str], title: str, fmt: str) -> bytes:
    """A confusion matrix as a heat map, rows = true class, numbers written in the cells (up to 20 classes)."""
    cm = np.asarray(matrix, dtype=float)
    size = min(12, 3 + 0.5 * len(classes))
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=100)
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ticks = range(len(classes))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=classes, yticklabels=classes, xlabel="predicted", ylabel="true",
           title=title)
    plt.setp(ax.get_xticklabels(), rotation=45 if max(map(len, classes)) > 3 else 0, ha="right")
    if len(classes) <= 20:
        for (i, j), value in np.ndenumerate(cm):
            ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=7,
                    color="white" if value > cm.max() / 2 else "black")
    return _png(fig)


def curves_plot(curves: list, classes: list[str], kind: str, areas: list[float | None],
                micro: tuple | None = None) -> bytes:
    """One-vs-rest ROC curves (kind 'roc': x = FPR, y = TPR) or precision-recall curves (kind 'pr')."""
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    for name, curve, area in zip(classes, curves, areas, strict=True):
        if curve is not None:
            x, y = curve if kind == "roc" else (curve[1], curve[0])  # PR: plot precision over recall
            ax.plot(x, y, linewidth=1, label=f"{name} ({area:.4f})")
    if micro is not None:
        ax.plot(*micro, color="black", linestyle="--", linewidth=1.5, label="micro average")
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one vs rest (AUC)")
    else:
        ax.set(xlabel="recall", ylabel="precision", title="precision-recall (average precision)")
    ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left", ncol=2 if len(classes) > 10 else 1)
    ax.grid(alpha=0.3)
    return _png(fig)


def reliability_plot(bins: dict, ece: float, bins_after: dict | None = None, ece_after: float | None = None) -> bytes:
    """Accuracy against confidence per bin (a reliability diagram), before and after temperature scaling."""
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=100)
    n = len(bins["count"])
    centers = (np.arange(n) + 0.5) / n
    for data, value, label, offset in ((bins, ece, "model", 0.0), (bins_after, ece_after, "calibrated", 0.3)):
        if data is not None:
            filled = np.asarray(data["count"]) > 0
            ax.bar(centers[filled] + offset / n - 0.15 / n, np.asarray(data["accuracy"])[filled], width=0.6 / n,
                   alpha=0.7, label=f"{label} (ECE {value:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy",
           title=f"reliability diagram, {n} bins")
    ax.legend(loc="upper left")
    return _png(fig)


def gallery(images: list[np.ndarray], titles: list[str], columns: int = 8) -> bytes:
    """A grid of uint8 (C, H, W) images with a title each (e.g. true and predicted labels)."""
    rows = max(1, -(-len(images) // columns))
    channels, height, width = images[0].shape
    pad_y, pad_x = height // 3, width // 8  # room for a title above each image
    # one mosaic in one axes: drawing a few dozen axes takes matplotlib several times longer
    mosaic = np.full((rows * (height + pad_y), columns * (width + pad_x), channels), 255, dtype=np.uint8)
    fig, ax = plt.subplots(figsize=(columns * 1.6, rows * 1.9), dpi=100)
    for i, (image, title) in enumerate(zip(images, titles, strict=True)):
        top, left = (i // columns) * (height + pad_y) + pad_y, (i % columns) * (width + pad_x)
        mosaic[top:top + height, left:left + width] = image.transpose(1, 2, 0)
        ax.text(left + width / 2, top - 1, title, fontsize=7, ha="center", va="bottom")
    _show(ax, mosaic.transpose(2, 0, 1))
    ax.axis("off")
    return _png(fig)


def accuracy_latency_plot(leaderboard: list[Ranked]) -> bytes:
    """Each model's accuracy (with its confidence interval) against its median latency at batch 1."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=100)
    for e in leaderboard:
        (low, high), latency = e.ci["accuracy"], e.latency_ms["p50"]
        ax.errorbar(latency, e.accuracy, yerr=[[e.accuracy - low], [high - e.accuracy]], fmt="o", capsize=3)
        ax.annotate(e.name, (latency, e.accuracy), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set(xscale="log", xlabel="latency at batch 1, median (ms, log scale)", ylabel="accuracy",
           title="accuracy vs latency (95% CI)")
    ax.grid(alpha=0.3)
    return _png(fig)


def _show(ax, image: np.ndarray, heat: np.ndarray | None = None) -> None:
    """A uint8 (C, H, W) image, in gray if it has one channel, with a (H, W) map in [0, 1] over it."""
    picture = image.transpose(1, 2, 0)
    ax.imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=255)
    if heat is not None:
        ax.imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1)
    ax.axis("off")


def overlay(image: np.ndarray, heat: np.ndarray, title: str) -> bytes:
    """An attribution map drawn over its image, with a colour bar."""
    fig, ax = plt.subplots(figsize=(3.2, 3), dpi=100)
    _show(ax, image, heat)
    fig.colorbar(ax.images[-1], ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    return _png(fig)


def explanation_grid(images: list[np.ndarray], maps: dict[str, np.ndarray], titles: list[str]) -> bytes:
    """One row per image: the image, then its map by each method."""
    fig, axes = plt.subplots(len(images), 1 + len(maps), figsize=(2.2 * (1 + len(maps)), 2.3 * len(images)),
                             dpi=100, squeeze=False)
    for row, (image, title) in enumerate(zip(images, titles, strict=True)):
        _show(axes[row, 0], image)
        axes[row, 0].set_title(title, fontsize=7)
        for col, (method, heat) in enumerate(maps.items(), start=1):
            _show(axes[row, col], image, heat[row])
            axes[row, col].set_title(method, fontsize=7)
    return _png(fig)


def robustness_plot(report: RobustnessReport) -> bytes:
    """Accuracy against corruption severity (one line per corruption) and against attack eps (one per attack),
    the clean accuracy at 0."""
    panels = [name for name, measured in (("corruptions", report.corruptions), ("attacks", report.attacks)) if measured]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4.5), dpi=100, squeeze=False)
    clean = report.clean_accuracy
    for ax, panel in zip(axes.flat, panels, strict=False):
        if panel == "corruptions":
            for i, (name, c) in enumerate(report.corruptions.items()):  # 15 lines: 20 colours, 2 styles
                ax.plot(range(len(c.accuracy) + 1), [clean, *c.accuracy], marker=".", label=name,
                        color=plt.cm.tab20(i % 20), linestyle="-" if i % 2 == 0 else "--")
            ax.set(xlabel="severity (0: clean)", title="corruptions")
            ax.legend(fontsize=7, ncol=2)
        else:
            for name, accs in report.attacks.items():
                eps = sorted(accs, key=float)
                ax.plot([0.0, *map(float, eps)], [clean, *[accs[e] for e in eps]], marker="o", label=name)
            ax.set(xlabel="eps (L-inf, pixels in [0, 1])", title="attacks")
            ax.legend()
        ax.set(ylabel="accuracy", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    return _png(fig)


def optuna_plots(study, folder: Path) -> list[Path]:
    """An Optuna study's optimization history, parameter importances and parallel coordinates as PNG files;
    a plot the study cannot support yet (e.g. importances need two completed trials) is left out."""
    import warnings

    from optuna.visualization import matplotlib as views

    written = []
    for name in ("optimization_history", "param_importances", "parallel_coordinate"):
        try:
            with warnings.catch_warnings():  # optuna marks its matplotlib backend experimental
                warnings.simplefilter("ignore")
                figure = getattr(views, f"plot_{name}")(study).figure
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue
        figure.set_size_inches(8, 5)
        path = folder / f"{name}.png"
        path.write_bytes(_png(figure))
        written.append(path)
    return written


def curves_grid(histories: dict[str, list[dict]]) -> bytes:
    """Training and validation loss per epoch of several runs, one small panel each."""
    columns = 4
    rows = -(-len(histories) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), dpi=90, squeeze=False)
    for ax, (title, history) in zip(axes.flat, histories.items(), strict=False):
        epochs = [float(r["epoch"]) for r in history]
        for split in ("train", "val"):
            values = [r.get(f"{split}_loss") for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o", label=split)
        ax.set_title(title, fontsize=8)
        ax.set(xlabel="epoch", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(histories):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def confusion_grid(matrices: dict[str, list[list[float]]], classes: list[str]) -> bytes:
    """Several confusion matrices (counts) side by side, rows = true class; the diagonal is left blank so that
    the errors show."""
    columns = 4
    rows = -(-len(matrices) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), dpi=90, squeeze=False)
    for ax, (title, matrix) in zip(axes.flat, matrices.items(), strict=False):
        errors = np.asarray(matrix, dtype=float)
        np.fill_diagonal(errors, np.nan)
        ax.imshow(errors, cmap="Reds")
        ticks = range(len(classes))
        ax.set(xticks=ticks, yticks=ticks, xticklabels=classes, yticklabels=classes)
        ax.tick_params(labelsize=6)
        ax.set_title(f"{title}\n{int(np.nansum(errors))} errors", fontsize=8)
        if len(classes) <= 10:
            for (i, j), value in np.ndenumerate(errors):
                if value > 0:
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=5)
    for ax in list(axes.flat)[len(matrices):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)
