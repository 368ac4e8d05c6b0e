"""`imgclf compare`: several runs on the same test images -> a leaderboard with confidence intervals and
McNemar's exact test of each model against the best, next to published figures for the dataset."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from imgclf.errors import ImgclfError
from imgclf.evaluate import metrics, plots
from imgclf.evaluate.evaluation import (
    device_for,
    efficiency,
    eval_data,
    fingerprint,
    robustness_record,
)
from imgclf.evaluate.report import figure, interval, p_value, page, table
from imgclf.evaluate.robustness_report import RobustnessHeadline
from imgclf.evaluate.stats import mcnemar, scores
from imgclf.predict import predict_logits
from imgclf.rundir import atomic_write, preprocess_of, run_folder
from imgclf.runtime import open_model
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


def compare_runs(runs: list[str | Path], *, source: str | None = None, data_dir: str | Path | None = None,
                 split: str | None = None, resamples: int = 1000, seed: int = 0, device: str = "auto",
                 latency_runs: int = 100, out: str | Path | None = None, progress: bool = False,
                 pairs: list[tuple[str, str]] = (), tta: bool = False) -> tuple[dict, Path]:
    """Evaluate every run on the same split; writes compare.json and compare.html into `out` (default: the
    folder holding the first run) and returns the comparison and the HTML path. Besides each run against the
    best, McNemar's test is run on each (a, b) of `pairs` (run names, as in the leaderboard). `tta`: every model
    scored on the mean of each image's and its mirror image's logits."""
    if len(runs) < 2:
        raise ImgclfError("compare needs at least two run directories.")
    entries, outcomes, first = [], [], None
    for run in runs:
        model, meta = open_model(run)
        folder, target = run_folder(run), device_for(model, device)
        data = eval_data(folder, meta, source, data_dir, split)
        digest = fingerprint(data.split)
        first = first or (digest, meta["classes"], data)
        if meta["classes"] != first[1] or digest != first[0]:
            raise ImgclfError(f"{folder} does not share the classes and {data.name} images of {runs[0]} (a different "
                              "dataset, data folder or split seed); compare runs trained on the same data, or pass "
                              "--dataset/--data to score all on one set.")
        pre = preprocess_of(meta)
        probs = metrics.softmax(predict_logits(model.to(target), data.split, pre, target, progress=progress, tta=tta),
                                meta.get("temperature", 1.0))
        predicted = probs.argmax(axis=1)
        outcomes.append(predicted == data.targets)
        speed = efficiency(model, meta, folder, data.split, target, latency_runs)
        summary, robust = RunSummary.read(folder), robustness_record(folder, meta)
        entries.append({
            "name": folder.name if Path(run).is_dir() else f"{folder.name}/{Path(run).name}", "run": str(run),
            "model": meta["architecture"]["name"],
            **scores(data.targets, predicted, len(meta["classes"]), resamples, seed),
            "ece": metrics.calibration(probs, data.targets)["ece"], "params": speed["params"],
            "flops": speed["flops"], "latency_ms": speed["latency_ms"], "throughput": speed["throughput"],
            "train_seconds": summary.train_seconds if summary else None,
            "robustness": robust.headline.to_json() if robust else None})
    best = int(np.argmax([e["accuracy"] for e in entries]))
    for entry, correct in zip(entries, outcomes, strict=True):
        entry["vs_best"] = None if entry is entries[best] else mcnemar(outcomes[best], correct)
    index = {e["name"]: i for i, e in enumerate(entries)}
    unknown = sorted({name for pair in pairs for name in pair} - set(index))
    if unknown:
        raise ImgclfError(f"cannot pair {', '.join(unknown)}: not among the compared runs ({', '.join(index)}).")
    paired = [{"a": a, "b": b, **mcnemar(outcomes[index[a]], outcomes[index[b]])} for a, b in pairs]
    order = sorted(range(len(entries)), key=lambda i: -entries[i]["accuracy"])
    data = first[2]
    result = {"tta": tta, "dataset": data.dataset.name, "split": data.name, "samples": len(data.targets),
              "created": datetime.now(timezone.utc).isoformat(), "best": entries[best]["name"],
              "leaderboard": [entries[i] for i in order], "pairs": paired,
              "published": PUBLISHED.get(data.dataset.name, []),
              "settings": {"resamples": resamples, "seed": seed, "level": 0.95, "device": device}}
    out = Path(out) if out else run_folder(runs[0]).parent
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "compare.json", lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    atomic_write(out / "compare.html", lambda tmp: tmp.write_text(render_comparison(result)))
    return result, out / "compare.html"


def render_comparison(result: dict) -> str:
    """The comparison as one HTML document: leaderboard, significance, the accuracy-latency plot, references."""
    board = result["leaderboard"]
    rows = [[e["name"], e["model"], interval(e["accuracy"], e["ci"]["accuracy"]),
             interval(e["macro_f1"], e["ci"]["macro_f1"]), e["ece"], f"{e['params']:,}", f"{e['flops']:,}",
             f"{e['latency_ms']['p50']:.2f} / {e['latency_ms']['p99']:.2f}",
             "best" if e["vs_best"] is None else f"{p_value(e['vs_best']['p_value'])} "
             f"({e['vs_best']['a_only']} vs {e['vs_best']['b_only']})"] for e in board]
    headers = ["run", "model", "accuracy [95% CI]", "macro F1 [95% CI]", "ECE", "params", "FLOPs",
               "latency p50 / p99 (ms)", "McNemar p vs best (best right only vs this right only)"]
    if any(e["robustness"] for e in board):  # measured by imgclf robustness on some of the runs
        headers += ["mean corruption accuracy", "PGD accuracy (eps)"]
        unmeasured = RobustnessHeadline(None, None, None)
        for row, e in zip(rows, board, strict=True):
            r = RobustnessHeadline.from_json(e["robustness"]) if e["robustness"] else unmeasured
            row += [r.mean_corruption_accuracy,
                    None if r.pgd_accuracy is None else f"{r.pgd_accuracy:.4f} ({r.pgd_eps})"]
    leaderboard = table(headers, rows)
    plot = plots.accuracy_latency_plot(board)
    published = table(["model (published, not run here)", "test accuracy", "source"],
                      [[p["model"], p["accuracy"], p["source"]] for p in result["published"]])
    return page(f"comparison on {result['dataset']} ({result['split']}, {result['samples']:,} images)", [
        ("Leaderboard", "<p class='note'>The same images for every model. McNemar's exact test is paired: a small "
                        "p-value means the two models' error rates differ beyond chance on these images.</p>"
                        + leaderboard),
        ("Pairs", table(["a", "b", "a right only", "b right only", "McNemar p"],
                        [[q["a"], q["b"], q["a_only"], q["b_only"], p_value(q["p_value"])] for q in result["pairs"]])
         if result.get("pairs") else ""),
        ("Accuracy vs latency", figure(plot, "accuracy against latency")),
        ("Published figures", published if result["published"] else ""),
    ])
