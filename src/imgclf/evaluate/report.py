"""Standalone HTML pages for evaluation and comparison reports: tables and PNG plots embedded inline."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING

from imgclf.evaluate.robustness_report import RobustnessReport
from imgclf.evaluate.stats import format_interval

if TYPE_CHECKING:
    from imgclf.evaluate.evaluation import EvalReport

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.note{color:#555;font-size:.9em}section{margin-bottom:2em}"""


@dataclass(frozen=True)
class Link:
    """A table cell that links somewhere: its text and href (a relative path or URL)."""

    text: str
    href: str


def table(headers: list[str], rows: list[list[object]]) -> str:
    """An HTML table; floats shown with 4 decimals, None as a dash, a Link as a link."""
    def cell(value: object) -> str:
        if value is None:
            return "&ndash;"
        if isinstance(value, Link):
            return f'<a href="{escape(value.href)}">{escape(value.text)}</a>'
        return f"{value:.4f}" if isinstance(value, float) else escape(str(value))
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def figure(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def page(title: str, sections: list[tuple[str, str]]) -> str:
    """A whole HTML document: a title and (heading, HTML body) sections, each with an id."""
    parts = [f'<section id="{escape(heading.lower().replace(" ", "-"))}"><h2>{escape(heading)}</h2>{body}</section>'
             for heading, body in sections if body]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>{''.join(parts)}</body></html>\n")


def render_report(r: EvalReport, figures: dict[str, bytes]) -> str:
    """An evaluation report as one HTML document, with its plots (PNG bytes by section)."""
    ci, eff, temp, fair = r.confidence_intervals, r.efficiency, r.temperature, r.fairness
    train = r.run_summary
    headline = table(["metric", "value"], [
        ["samples", f"{r.samples:,} ({r.dataset} {r.split})"],
        ["accuracy [95% bootstrap CI]", format_interval(r.accuracy, ci["accuracy"])],
        ["macro F1 [95% bootstrap CI]", format_interval(r.macro["f1"], ci["macro_f1"])],
        [f"top-{r.top_k['k']} accuracy", r.top_k["accuracy"]], ["log loss", r.log_loss],
        ["ROC AUC macro / micro", f"{_num(r.macro_auc)} / {_num(r.micro_auc)}"],
        ["ECE (15 bins) before / after temperature", f"{temp['ece_uncalibrated']:.4f} / {r.calibration['ece']:.4f}"],
        ["worst class accuracy", f"{fair['worst_accuracy']:.4f} (class {fair['worst_class']})"],
        ["latency at batch 1 p50 / p99", f"{eff['latency_ms']['p50']:.2f} / {eff['latency_ms']['p99']:.2f} ms"],
        ["parameters / FLOPs per image", f"{eff['params']:,} / {eff['flops']:,}"],
        ["training time", f"{train.train_seconds:.1f} s" if train else None],
    ])
    per_class = table(["class", "precision", "recall", "F1", "support", "ROC AUC", "average precision"],
                      [[row["class"], row["precision"], row["recall"], row["f1"], row["support"], auc, ap]
                       for row, auc, ap in zip(r.per_class, r.auc, r.average_precision, strict=True)]
                      + [[f"{avg} average", means["precision"], means["recall"], means["f1"], r.samples,
                          r.macro_auc if avg == "macro" else None,
                          r.macro_average_precision if avg == "macro" else None]
                         for avg, means in (("macro", r.macro), ("weighted", r.weighted))])
    fitted = temp["fitted"]
    calibration = (f"<p>Temperature {temp['value']:.4f}"
                   + (f", fitted on the {escape(fitted['fitted_on'])} ({fitted['samples']:,} images)" if fitted else
                      " (none fitted: run <code>imgclf evaluate RUN --calibrate</code>)")
                   + f". Expected calibration error on this split: {temp['ece_uncalibrated']:.4f} uncalibrated, "
                     f"{r.calibration['ece']:.4f} as served. Log loss {temp['log_loss_uncalibrated']:.4f} "
                     f"uncalibrated, {r.log_loss:.4f} as served.</p>"
                   + figure(figures.get("reliability"), "reliability diagram"))
    confused = table(["true", "predicted as", "count", "share of the true class"],
                     [[p["true"], p["predicted"], p["count"], p["share_of_true"]] for p in r.most_confused])
    efficiency = table(["measure", "value"], [
        ["parameters", f"{eff['params']:,}"],
        ["multiply-adds / FLOPs per image", f"{eff['macs']:,} / {eff['flops']:,}"],
        ["weights file", f"{eff['file_mb']:.3f} MiB"], ["device, threads", f"{eff['device']}, {eff['threads']}"],
        *[[f"latency at batch 1, {q}", f"{eff['latency_ms'][q]:.3f} ms"] for q in ("p50", "p95", "p99")],
        [f"throughput at batch {eff['throughput']['batch']}",
         f"{eff['throughput']['images_per_second']:,.0f} images/s"],
        ["training time", f"{train.train_seconds:.1f} s over {train.epochs:.2f} epochs on {train.device}"
         if train else None]])
    fairness = table(["", "class", "accuracy (recall)"],
                     [["worst", fair["worst_class"], fair["worst_accuracy"]],
                      ["best", fair["best_class"], fair["best_accuracy"]], ["gap", "", fair["gap"]]])
    notes = "".join(f"<p class='note'>{escape(n)}</p>" for n in r.notes)
    return page(f"{r.model} on {r.dataset} ({r.split})", [
        ("Summary", f"<p class='note'>Run {escape(r.run)}, evaluated {escape(r.created)}.</p>{notes}{headline}"),
        ("Training curves", figure(figures.get("curves"), "loss and accuracy per epoch")),
        ("Classification report", per_class),
        ("Confusion matrix", figure(figures["confusion"], "confusion matrix")
         + figure(figures["confusion_normalized"], "normalized confusion matrix")),
        ("ROC and precision-recall", figure(figures["roc"], "ROC curves") + figure(figures["pr"], "PR curves")),
        ("Calibration", calibration),
        ("Most confused pairs", confused if r.most_confused else "<p>No mistakes.</p>"),
        ("Misclassified images", "<p class='note'>Highest loss first: true -> predicted (confidence).</p>"
         + figure(figures.get("misclassified"), "misclassified images") if r.misclassified else ""),
        ("Efficiency", efficiency),
        ("Fairness", fairness),
        ("Robustness", robustness_section(r.robustness_report, figures.get("robustness")) if r.robustness else ""),
        ("Unknown inputs", unknown_section(r.unknown) if r.unknown else ""),
    ])


def unknown_section(u: dict) -> str:
    """The unknown-input detection's rejections on the scored images and against out-of-distribution ones."""
    body = (f"<p>Answered <code>unknown</code> when the {escape(u['method'])} score is above {u['threshold']:.4g}: "
            f"the threshold rejecting {u['rate']:.1%} of the {u['validation_images']:,} validation images. On "
            f"these images it rejects {u['rejected']:.2%}; accuracy on the accepted ones "
            f"{_num(u['accepted_accuracy'])}, on the rejected ones {_num(u['rejected_accuracy'])}.</p>")
    if u.get("check"):
        body += ("<p>Self-check at fitting, AUROC against generated images: "
                 + ", ".join(f"{escape(kind)} {auroc:.3f}" for kind, auroc in u["check"].items()) + ".</p>")
    if u.get("warning"):
        body += f"<p class='note'>Warning: {escape(u['warning'])}</p>"
    if u["ood"]:
        methods = [m for m in u["ood"][0] if isinstance(u["ood"][0][m], dict)]
        body += table(["out-of-distribution images", "images", f"rejected ({u['method']})",
                       *[f"{m} AUROC / FPR@95%TPR" for m in methods]],
                      [[o["source"], o["images"], f"{o['rejected']:.2%}",
                        *[f"{o[m]['auroc']:.4f} / {o[m]['fpr95']:.4f}" for m in methods]] for o in u["ood"]])
    return body


def robustness_section(report: RobustnessReport, png: bytes | None) -> str:
    """The robustness tables and plots as an HTML fragment (its own page, or a section of a report)."""
    note = (f"<p class='note'>{report.images:,} {escape(report.dataset)} {escape(report.split)} images "
            f"(seeded sample, seed {report.seed}); "
            f"clean accuracy {report.clean_accuracy:.4f}.</p>")
    corruptions = report.corruptions
    severities = max((len(c.accuracy) for c in corruptions.values()), default=0)
    body = note
    if corruptions:
        body += table(["corruption", *[f"severity {s + 1}" for s in range(severities)], "mean",
                       "relative degradation"],
                      [[name, *c.accuracy, c.mean_accuracy, c.relative_degradation]
                       for name, c in corruptions.items()]
                      + [["all (mean corruption accuracy)", *[None] * severities, report.mean_corruption_accuracy,
                          report.relative_degradation]])
    settings = report.attack_settings
    if report.attacks:
        eps = sorted({e for accs in report.attacks.values() for e in accs}, key=float)
        body += (f"<p class='note'>Attacks: {escape(settings.norm)}; PGD {settings.steps} steps of "
                 f"{escape(str(settings.step_size))}, random start {settings.random_start}.</p>"
                 + table(["attack", *[f"eps {e}" for e in eps]],
                         [[name, *[accs.get(e) for e in eps]] for name, accs in report.attacks.items()]))
    return body + figure(png, "accuracy by corruption severity and attack strength")


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
