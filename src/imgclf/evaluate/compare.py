"""`imgclf compare`: several runs on the same test images -> a leaderboard with confidence intervals and
McNemar's exact test of each model against the best, next to published figures for the dataset."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from imgclf.errors import ImgclfError
from imgclf.evaluate import metrics, plots
from imgclf.evaluate.evaluation import (
    OpenRun,
    Predictions,
    ScoreOn,
    open_run,
    predict,
    robustness_record,
)
from imgclf.evaluate.report import figure, page, table
from imgclf.evaluate.results import Result
from imgclf.evaluate.robustness_report import RobustnessHeadline
from imgclf.evaluate.stats import format_interval, format_p, mcnemar, scores
from imgclf.files import atomic_write
from imgclf.training.summary import RunSummary

# Published test accuracies, for context only: other training setups, not runs of this tool.
PUBLISHED = {
    "mnist": [
        {"model": "LeNet-5", "accuracy": 0.9905,
         "source": "LeCun, Bottou, Bengio, Haffner (1998), Gradient-based learning applied to document "
                   "recognition, Proc. IEEE 86(11): 0.95% test error"},
        {"model": "CNN with elastic distortions", "accuracy": 0.996,
         "source": "Simard, Steinkraus, Platt (2003), Best practices for convolutional neural networks applied to "
                   "visual document analysis, ICDAR: 0.4% test error"},
        {"model": "committee of 35 CNNs (MCDNN)", "accuracy": 0.9977,
         "source": "Ciresan, Meier, Schmidhuber (2012), Multi-column deep neural networks for image "
                   "classification, CVPR: 0.23% test error"},
    ],
}


@dataclass
class Ranked:
    """One model's row of a comparison's leaderboard."""

    name: str  # the run's folder name (with the file's name for a model file)
    run: str  # as given
    model: str  # architecture name
    accuracy: float
    macro_f1: float
    ci: dict  # 95% bootstrap intervals: accuracy, macro_f1
    ece: float
    params: int
    flops: int
    latency_ms: dict  # p50, p95, p99, mean, runs (batch 1)
    throughput: dict  # batch, images_per_second
    train_seconds: float | None
    robustness: dict | None  # the headline of the run's robustness.json, if it measured these weights
    vs_best: dict | None = None  # McNemar's test against the best (None: this is the best)
    fingerprint: str | None = None  # OpenRun.fingerprint of what was scored


@dataclass
class Comparison(Result):
    """Several models on the same images; saved as compare.json (the fields are its keys, in order)."""

    tta: bool
    dataset: str
    split: str
    samples: int
    created: str  # ISO time
    best: str  # the most accurate run's name
    leaderboard: list[Ranked]  # most accurate first
    pairs: list[dict]  # a, b and McNemar's test of each chosen pair
    published: list[dict]  # model, accuracy, source: other setups' figures for context
    settings: dict  # resamples, seed, level, device

    @classmethod
    def from_json(cls, data: dict) -> Comparison:
        """The comparison from compare.json."""
        ranked = {f.name for f in fields(Ranked)}
        board = [Ranked(**{k: v for k, v in e.items() if k in ranked}) for e in data["leaderboard"]]
        return super().from_json({**data, "leaderboard": board})

    def entry(self, name: str) -> Ranked:
        """The leaderboard row of the run called `name`."""
        return next(e for e in self.leaderboard if e.name == name)


def check_same_data(runs: list[OpenRun]) -> None:
    """Refuse runs that are not scored on the same classes and images (no paired test is possible then)."""
    first = runs[0]
    for run in runs[1:]:
        if run.meta["classes"] != first.meta["classes"] or run.data_fingerprint != first.data_fingerprint:
            raise ImgclfError(f"{run.folder} does not share the classes and {run.data.name} images of {first.path} "
                              "(a different dataset, data folder or split seed); compare runs trained on the same "
                              "data, or pass --dataset/--data to score all on one set.")


def compare(predictions: list[Predictions], *, pairs: list[tuple[str, str]] = (), resamples: int = 1000,
            seed: int = 0) -> Comparison:
    """Rank models by accuracy on the same images, with bootstrap intervals and McNemar's exact test of each
    against the best and of each (a, b) of `pairs` (run names, as in the leaderboard)."""
    check_same_data([p.run for p in predictions])
    entries, outcomes = [], []
    for p in predictions:
        run, speed = p.run, p.efficiency
        probs = metrics.softmax(p.logits, run.meta.get("temperature", 1.0))
        predicted = probs.argmax(axis=1)
        outcomes.append(predicted == p.targets)
        summary, robust = RunSummary.read(run.folder), robustness_record(run.folder, run.meta)
        entries.append(Ranked(
            name=run.name, run=str(run.path), model=run.meta["architecture"]["name"],
            **scores(p.targets, predicted, len(run.meta["classes"]), resamples, seed),
            ece=metrics.calibration(probs, p.targets)["ece"], params=speed["params"], flops=speed["flops"],
            latency_ms=speed["latency_ms"], throughput=speed["throughput"],
            train_seconds=summary.train_seconds if summary else None,
            robustness=robust.headline.to_json() if robust else None, fingerprint=run.fingerprint))
    best = int(np.argmax([e.accuracy for e in entries]))
    for entry, correct in zip(entries, outcomes, strict=True):
        entry.vs_best = None if entry is entries[best] else mcnemar(outcomes[best], correct)
    index = {e.name: i for i, e in enumerate(entries)}
    unknown = sorted({name for pair in pairs for name in pair} - set(index))
    if unknown:
        raise ImgclfError(f"cannot pair {', '.join(unknown)}: not among the compared runs ({', '.join(index)}).")
    data = predictions[0].run.data
    return Comparison(
        tta=predictions[0].tta, dataset=data.dataset.name, split=data.name, samples=len(data.targets),
        created=datetime.now(timezone.utc).isoformat(), best=entries[best].name,
        leaderboard=sorted(entries, key=lambda e: -e.accuracy),
        pairs=[{"a": a, "b": b, **mcnemar(outcomes[index[a]], outcomes[index[b]])} for a, b in pairs],
        published=PUBLISHED.get(data.dataset.name, []),
        settings={"resamples": resamples, "seed": seed, "level": 0.95, "device": predictions[0].run.on.device})


def write_comparison(comparison: Comparison, out: Path) -> Path:
    """compare.json and the standalone compare.html into `out`; the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    comparison.save(out / "compare.json")
    html = render_comparison(comparison)
    atomic_write(out / "compare.html", lambda tmp: tmp.write_text(html))
    return out / "compare.html"


def compare_runs(runs: list[str | Path], on: ScoreOn = ScoreOn(), *, pairs: list[tuple[str, str]] = (),
                 resamples: int = 1000, seed: int = 0, latency_runs: int = 100, out: str | Path | None = None,
                 progress: bool = False, tta: bool = False) -> tuple[Comparison, Path]:
    """`imgclf compare`: open every run, check they share the images, predict each once, compare, and write
    compare.json and compare.html into `out` (default: the folder holding the first run); returns the
    comparison and the HTML path. `tta`: every model scored on the mean of each image's and its mirror
    image's logits."""
    if len(runs) < 2:
        raise ImgclfError("compare needs at least two run directories.")
    opened = [open_run(run, on) for run in runs]
    check_same_data(opened)  # before any inference
    comparison = compare([predict(run, latency_runs=latency_runs, tta=tta, progress=progress) for run in opened],
                         pairs=pairs, resamples=resamples, seed=seed)
    return comparison, write_comparison(comparison, Path(out) if out else opened[0].folder.parent)


def render_comparison(result: Comparison) -> str:
    """The comparison as one HTML document: leaderboard, significance, the accuracy-latency plot, references."""
    board = result.leaderboard
    rows = [[e.name, e.model, format_interval(e.accuracy, e.ci["accuracy"]),
             format_interval(e.macro_f1, e.ci["macro_f1"]), e.ece,
             f"{e.params:,}", f"{e.flops:,}", f"{e.latency_ms['p50']:.2f} / {e.latency_ms['p99']:.2f}",
             "best" if e.vs_best is None else f"{format_p(e.vs_best['p_value'])} "
             f"({e.vs_best['a_only']} vs {e.vs_best['b_only']})"] for e in board]
    headers = ["run", "model", "accuracy [95% CI]", "macro F1 [95% CI]", "ECE", "params", "FLOPs",
               "latency p50 / p99 (ms)", "McNemar p vs best (best right only vs this right only)"]
    if any(e.robustness for e in board):  # measured by imgclf robustness on some of the runs
        headers += ["mean corruption accuracy", "PGD accuracy (eps)"]
        unmeasured = RobustnessHeadline(None, None, None)
        for row, e in zip(rows, board, strict=True):
            r = RobustnessHeadline.from_json(e.robustness) if e.robustness else unmeasured
            row += [r.mean_corruption_accuracy,
                    None if r.pgd_accuracy is None else f"{r.pgd_accuracy:.4f} ({r.pgd_eps})"]
    leaderboard = table(headers, rows)
    plot = plots.accuracy_latency_plot(board)
    published = table(["model (published, not run here)", "test accuracy", "source"],
                      [[p["model"], p["accuracy"], p["source"]] for p in result.published])
    return page(f"comparison on {result.dataset} ({result.split}, {result.samples:,} images)", [
        ("Leaderboard", "<p class='note'>The same images for every model. McNemar's exact test is paired: a small "
                        "p-value means the two models' error rates differ beyond chance on these images.</p>"
                        + leaderboard),
        ("Pairs", table(["a", "b", "a right only", "b right only", "McNemar p"],
                        [[q["a"], q["b"], q["a_only"], q["b_only"], format_p(q["p_value"])] for q in result.pairs])
         if result.pairs else ""),
        ("Accuracy vs latency", figure(plot, "accuracy against latency")),
        ("Published figures", published if result.published else ""),
    ])
