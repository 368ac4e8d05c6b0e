"""`imgclf study paper`: the seed paper's questions (how do AlexNet by transfer learning and custom CNNs compare on
MNIST in accuracy and cost, which hyperparameters matter, how to evaluate) answered from real runs. Every number
in the PAPER.md it writes comes from runs made here, except the published references, which are labelled."""

from __future__ import annotations

import json
import logging
import platform
import shlex
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from imgclf import __version__
from imgclf.config import RECIPES, Config, load_config
from imgclf.errors import ImgclfError
from imgclf.evaluate import plots
from imgclf.evaluate.compare import Comparison, Ranked, compare, write_comparison
from imgclf.evaluate.evaluation import (
    EvalReport,
    OpenRun,
    ScoreOn,
    evaluate,
    open_run,
    predict,
    robustness_record,
    write_report,
)
from imgclf.evaluate.report import figure, page, table
from imgclf.evaluate.stats import format_interval, format_p
from imgclf.models import create_model
from imgclf.models.summary import summarize
from imgclf.robustness import CORRUPTIONS, robustness
from imgclf.rundir import atomic_write, read_meta
from imgclf.training import RunSummary, train
from imgclf.tune import tune

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """How much of the study a machine can afford; every run of the architecture comparison gets the same."""

    subset: int | None  # training images (before the 10% validation split) for the compared architectures
    epochs: float  # their epochs
    alexnet_size: int  # AlexNet's input side (its smallest is 63)
    backbone_size: int  # ResNet-18's and MobileNetV3's input side
    best_epochs: float  # the mnist-best recipe's epochs (its own: 7); the fast recipe runs as it is
    tune_trials: int  # Table III: TPE trials over the paper's space
    tune_subset: int  # ... on this many training images
    tune_epochs: float  # ... for this many epochs each (the paper searched 10, 20 and 30)
    robustness_images: int  # test images for the corruption and attack columns
    corruptions: tuple[str, ...] | None = None  # which corruptions (None: all 15)
    resamples: int = 1000  # bootstrap resamples for the confidence intervals
    latency_runs: int = 100  # single-image forward passes timed per model


BUDGETS = {
    # about 30 minutes on 2 CPU cores (see docs/paper-results.md for the measured time)
    "cpu": Budget(subset=20_000, epochs=2, alexnet_size=64, backbone_size=32, best_epochs=2, tune_trials=10,
                  tune_subset=3_000, tune_epochs=1, robustness_images=500),
    # seconds: checks that the whole study works (the test suite runs it)
    "smoke": Budget(subset=300, epochs=1, alexnet_size=64, backbone_size=16, best_epochs=0.1, tune_trials=2,
                    tune_subset=400, tune_epochs=1, robustness_images=50, corruptions=("gaussian_noise", "rotation"),
                    resamples=100, latency_runs=5),
}
# the configurable CNN with the paper's "enhanced components", and each removed in turn
ENHANCED = {"layers": 6, "width": 32, "residual": True, "batch_norm": True, "dropout": 0.1}
ABLATIONS = {"cnn-no-residual": {"residual": False}, "cnn-no-batchnorm": {"batch_norm": False},
             "cnn-no-dropout": {"dropout": 0.0}}
TABLE_III = {"train.lr": [0.001, 0.01, 0.1], "train.batch_size": [32, 64, 128], "model.options.layers": [5, 10, 15],
             "model.options.kernel": [3, 5, 7]}


@dataclass(frozen=True)
class Entry:
    name: str  # run directory name
    label: str  # how the tables call it
    config: Config
    note: str  # how it was trained


@dataclass(frozen=True)
class Paper:
    """What the write-up is made from: the settings, the runs, their scores and the search."""

    budget: str  # the budget's name
    b: Budget
    dataset: str
    command: str | None
    machine: dict  # cpu, threads, gpu, python, torch, imgclf, platform
    started: str  # ISO time
    entries: list[Entry]
    reports: dict[str, EvalReport]  # by run name
    compared: Comparison
    table_iii: dict  # tune's result
    table_ii: list[dict]  # layer, type, output, params

    def to_json(self) -> dict:
        """paper.json: every number of the write-up."""
        return {"budget": {"name": self.budget, **asdict(self.b)}, "dataset": self.dataset, "command": self.command,
                "machine": self.machine, "started": self.started,
                "entries": [{"name": e.name, "label": e.label, "note": e.note} for e in self.entries],
                "reports": {name: report.to_json() for name, report in self.reports.items()},
                "compare": self.compared.to_json(), "table_iii": self.table_iii, "table_ii": self.table_ii}

    @property
    def labels(self) -> dict[str, str]:
        """How the tables call each run, by run name."""
        return {e.name: e.label for e in self.entries}


def study_paper(out: str | Path = "studies/paper", *, budget: str = "cpu", dataset: str = "mnist",
                data_dir: str | Path | None = None, device: str = "auto", recipes: str | Path = RECIPES,
                command: str | None = None, progress: bool = False) -> Path:
    """Train, evaluate, search and compare everything the paper's tables need, skipping what a previous
    call finished; writes PAPER.md, paper.html and paper.json into `out` and returns the PAPER.md path."""
    if budget not in BUDGETS:
        raise ImgclfError(f"--budget must be one of {', '.join(BUDGETS)}, got {budget!r}.")
    recipes = Path(recipes)
    if not (recipes / "paper-cnn.yaml").is_file():
        raise ImgclfError(f"the recipes (paper-cnn.yaml, ...) are not in {recipes}; pass --recipes DIR, a folder "
                          "holding them.")
    out, b = Path(out), BUDGETS[budget]
    common = {"out": str(out / "runs"), "data.dataset": dataset, "data.data_dir": str(data_dir) if data_dir else None,
              "train.device": device}
    entries = _plan(b, recipes, common)
    started = datetime.now(timezone.utc)
    for entry in entries:
        _train(entry, progress)
    folders, on = [out / "runs" / e.name for e in entries], ScoreOn(data_dir=data_dir, device=device)
    for folder in folders:
        _robustness(folder, b, on, progress)
    pairs = [("cnn-enhanced", name) for name in ABLATIONS] + [("cnn-enhanced", "paper-cnn"),
                                                               ("alexnet", "paper-cnn")]
    reports, compared = _score(folders, pairs, b, on, out, progress)
    search = _table_iii(b, recipes, common, out, progress)
    paper = Paper(budget, b, dataset, command, _machine(), started.isoformat(), entries, reports, compared, search,
                  _table_ii())
    atomic_write(out / "paper.json",
                 lambda tmp: tmp.write_text(json.dumps(paper.to_json(), indent=2, default=str) + "\n"))
    return _write(paper, out)


def _plan(b: Budget, recipes: Path, common: dict) -> list[Entry]:
    """Every run of the study, in the order they train."""
    same = {**common, "data.subset": b.subset, "train.epochs": b.epochs}

    def recipe(file: str, **overrides: object) -> Config:
        return load_config(recipes / f"{file}.yaml", overrides)

    # the paper's training (Adam, lr 0.001, batch 64, cross-entropy); its plateau schedule cannot act within a
    # budget of a few epochs, so the rate decays on a cosine instead, for every model alike
    paper = {"data.augment": "none", "train.schedule": "cosine", **same}
    how = "the paper's: Adam, lr 0.001, batch 64, cosine decay"
    entries = [Entry("paper-cnn", "paper CNN (Table II)", recipe("paper-cnn", name="paper-cnn", **paper), how)]
    for name, change in {"cnn-enhanced": {}, **ABLATIONS}.items():
        options = {**ENHANCED, **change}
        label = "CNN + residual + batch norm + dropout" if not change else f"enhanced CNN without {name[7:]}"
        entries.append(Entry(name, label, recipe("paper-cnn", name=name, **paper, **{
            "model.name": "cnn", "model.options": options}), how))
    for arch, size in (("alexnet", b.alexnet_size), ("resnet18", b.backbone_size),
                       ("mobilenet_v3_small", b.backbone_size)):
        shape = {"model.name": arch, "data.image_size": size}
        config = recipe("alexnet-transfer", name=arch, **same, **shape)
        if _pretrained_available(config):
            entries.append(Entry(arch, f"{arch} at {size}x{size}, ImageNet weights (transfer learning)", config,
                                 "alexnet-transfer recipe: SGD 0.01, cosine, batch 128, digit augmentation, the "
                                 "head alone for the first epoch"))
        else:  # the CNNs' recipe at a tenth of the rate: AlexNet from scratch stalls at 0.001
            config = recipe("paper-cnn", name=arch, **paper, **shape, **{"train.lr": 0.0001})
            entries.append(Entry(arch, f"{arch} at {size}x{size}, from scratch (no pretrained weights here)", config,
                                 "from scratch: Adam, lr 0.0001, batch 64, cosine decay"))
    entries.append(Entry("mnist-fast", "imgclf fast recipe", recipe("mnist-fast", name="mnist-fast", **common),
                         "its own: AdamW one-cycle, batch 256, all training images, 1 epoch"))
    best = recipe("mnist-best", name="mnist-best", **common, **{"train.epochs": b.best_epochs})
    entries.append(Entry("mnist-best", "imgclf best recipe", best,
                         f"its own: augmentation, EMA, all training images, {b.best_epochs:g} of its 7 epochs"))
    return entries


def _pretrained_available(config: Config) -> bool:
    """Whether the backbone's ImageNet weights can be had (the torch hub cache, a local file, or a download)."""
    try:
        create_model(config.model.name, 10, 1, config.data.image_size, pretrained=True, weights=config.model.weights)
    except ImgclfError as err:
        log.warning("%s: %s; training it from scratch", config.model.name, str(err).split(". ")[0])
        return False
    return True


def _train(entry: Entry, progress: bool) -> None:
    """Train the entry's run, or resume it if a previous study was stopped part-way; a finished run is kept."""
    folder = Path(entry.config.out) / entry.name
    summary = RunSummary.read(folder)
    if summary is not None and summary.stopped.finished:
        log.info("%s: trained before, kept", entry.name)
        return
    log.info("training %s: %s", entry.name, entry.label)
    resume = folder if (folder / "state.pt").is_file() else None
    run = train(None if resume else entry.config, resume=resume, progress=progress)
    if not run.summary.stopped.finished:
        raise ImgclfError(f"{entry.name} stopped ({run.summary.stopped}); run the study again to continue it.")


def _robustness(folder: Path, b: Budget, on: ScoreOn, progress: bool) -> None:
    """robustness.json (the robustness columns) of a trained run, measured once per set of weights."""
    if robustness_record(folder, read_meta(folder / "model.json", "train it again")) is None:  # none, or stale
        robustness(folder, corruptions=list(b.corruptions) if b.corruptions else None, attack_names=("fgsm", "pgd"),
                   eps=(0.1,), steps=10, limit=b.robustness_images, on=on, progress=progress)


def _score(folders: list[Path], pairs: list[tuple[str, str]], b: Budget, on: ScoreOn, out: Path,
           progress: bool) -> tuple[dict[str, EvalReport], Comparison]:
    """Every run's report.json and the comparison (compare.json in `out`) from one prediction and one timing
    per model, so both show the same numbers; kept as they are while the runs score the same."""
    runs = [open_run(folder, on) for folder in folders]
    saved = _saved(runs, pairs, out)
    if saved is not None:
        log.info("the reports and the comparison are of these weights and images: kept")
        return saved
    predictions = [predict(run, latency_runs=b.latency_runs, progress=progress) for run in runs]
    reports = {p.run.name: evaluate(p, resamples=b.resamples) for p in predictions}
    for p in predictions:
        write_report(reports[p.run.name], p, p.run.folder)
    compared = compare(predictions, pairs=pairs, resamples=b.resamples)
    write_comparison(compared, out)
    return reports, compared


def _saved(runs: list[OpenRun], pairs: list[tuple[str, str]], out: Path
           ) -> tuple[dict[str, EvalReport], Comparison] | None:
    """The reports and comparison a previous call wrote, if each was made from what the runs are now (their
    fingerprints: weights, images, temperature) with the robustness results they have now; else None."""
    try:
        reports = {run.name: EvalReport.load(run.folder / "report.json") for run in runs}
        compared = Comparison.load(out / "compare.json")
    except (OSError, ValueError, TypeError, KeyError):  # missing, damaged, or of another format
        return None
    fresh = all(reports[run.name].fingerprint == run.fingerprint
                and reports[run.name].robustness_report == robustness_record(run.folder, run.meta) for run in runs)
    compared_fresh = ({e.name: e.fingerprint for e in compared.leaderboard} == {r.name: r.fingerprint for r in runs}
                      and [(p["a"], p["b"]) for p in compared.pairs] == pairs)
    return (reports, compared) if fresh and compared_fresh else None


def _table_iii(b: Budget, recipes: Path, common: dict, out: Path, progress: bool) -> dict:
    """The paper's Table III search (learning rate, batch size, layers, filter size on the configurable CNN) with
    TPE on a reduced budget; resumed up to the budget's trials by a later call."""
    config = load_config(recipes / "paper-cnn.yaml", {
        **common, "out": str(out), "data.augment": "none", "data.subset": b.tune_subset,
        "train.epochs": b.tune_epochs, "train.schedule": "constant", "model.name": "cnn"})
    return tune(config, TABLE_III, sampler="tpe", pruner="median", trials=b.tune_trials, study="table-iii", seed=0,
                progress=progress)


def _table_ii() -> list[dict]:
    """The paper CNN's layers at MNIST size, with output shapes and parameter counts."""
    summary = summarize(create_model("paper-cnn", 10, 1, 28), (1, 28, 28))
    rows = [{"layer": name, "type": kind, "output": list(shape), "params": params}
            for name, kind, shape, params in summary.rows]
    return [*rows, {"layer": "total", "type": "", "output": [], "params": summary.total}]


def _machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
               platform.processor())
    return {"cpu": cpu, "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "imgclf": __version__,
            "platform": platform.platform()}


# -- PAPER.md and paper.html, from the same tables ---------------------------------------------------------------
def _write(r: Paper, out: Path) -> Path:
    sections = _sections(r, out)
    markdown = [f"# The seed paper's study, regenerated from real runs\n\n{_preamble(r)}"]
    for heading, text, headers, rows, picture in sections:
        markdown.append(f"## {heading}\n\n{text}\n")
        if headers:
            markdown.append(_markdown_table(headers, rows))
        if picture:
            markdown.append(f"\n![{heading}]({picture})\n")
    atomic_write(out / "PAPER.md", lambda tmp: tmp.write_text("\n".join(markdown) + "\n"))
    html = page("The seed paper's study, regenerated from real runs", [("Setup", f"<pre>{_preamble(r)}</pre>")] + [
        (heading, f"<p>{text}</p>" + (table(headers, rows) if headers else "")
         + (figure((out / picture).read_bytes(), heading) if picture else ""))
        for heading, text, headers, rows, picture in sections])
    atomic_write(out / "paper.html", lambda tmp: tmp.write_text(html))
    return out / "PAPER.md"


def _preamble(r: Paper) -> str:
    b, m = r.b, r.machine
    return (
        f"Produced by `{r.command or 'imgclf study paper'}` (started {r.started[:16].replace('T', ' ')} UTC) on "
        f"{m['cpu']} ({m['threads']} threads{', ' + m['gpu'] if m['gpu'] else ', no GPU'}), Python {m['python']}, "
        f"PyTorch {m['torch']}, imgclf {m['imgclf']}.\n\n"
        f"Budget `{r.budget}`: the compared architectures train on the first {b.subset or 'all'} {r.dataset} "
        "training "
        f"images (10% of them held out, stratified, for validation) for {b.epochs:g} epochs; AlexNet at "
        f"{b.alexnet_size}x{b.alexnet_size} pixels, ResNet-18 and MobileNetV3 at "
        f"{b.backbone_size}x{b.backbone_size}; the fast recipe runs as it is, the best recipe "
        f"{b.best_epochs:g} of its 7 epochs. Table III: {b.tune_trials} TPE trials on {b.tune_subset} "
        f"images, {b.tune_epochs:g} epoch each (the paper searched 10, 20 and 30 epochs). Every model is scored "
        f"on all {r.compared.samples:,} {r.dataset} test images; robustness on {b.robustness_images} of "
        "them. Every number is from "
        "these runs except the rows marked *published*. Re-running the command skips finished work.\n")


def _sections(r: Paper, out: Path) -> list[tuple[str, str, list[str], list[list], str | None]]:
    """(heading, text, table headers, rows, figure file) for each part of the write-up."""
    labels, reports = r.labels, r.reports
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    (figures / "curves.png").write_bytes(plots.curves_grid(
        {labels[n]: rep.training["history"] for n, rep in reports.items()}))
    (figures / "confusions.png").write_bytes(plots.confusion_grid(
        {labels[n]: rep.confusion for n, rep in reports.items()}, next(iter(reports.values())).classes))
    table_iv = [_row_iv(e, reports[e.name], r.compared.entry(e.name)) for e in r.entries]
    pairs = [[labels[p["a"]], labels[p["b"]], p["a_only"], p["b_only"], format_p(p["p_value"]),
              _delta(reports[p["a"]].accuracy - reports[p["b"]].accuracy)]
             for p in r.compared.pairs]
    search, samples = r.table_iii, r.compared.samples
    return [
        ("The answer", _answer(r), [], [], None),
        ("Table II: the paper's CNN", "Layers at MNIST size (1x28x28), as `imgclf summary paper-cnn` prints them.",
         ["layer", "type", "output shape", "parameters"],
         [[row["layer"], row["type"], "x".join(map(str, row["output"])), f"{row['params']:,}"]
          for row in r.table_ii], None),
        ("Table III: the hyperparameter search, run",
         f"TPE with median pruning over the paper's space on the configurable CNN; {search['trials']} trials "
         f"({search['pruned']} pruned), {search['train_seconds']:.0f} s of training. Best validation accuracy "
         f"{search['best']['value']:.4f} (trial {search['best']['trial']}); its model scores "
         f"{search['test']['accuracy']:.4f} on the test split. The mean validation accuracy per tested value shows "
         "which settings matter on this budget.",
         ["parameter", "values tested", "best value", "mean validation accuracy by value"],
         [[row["parameter"], ", ".join(map(str, row["values tested"])), row["best"],
           ", ".join(f"{v}: {a:.3f}" for v, a in _means(out / "table-iii" / "trials.csv", row["parameter"]).items())]
          for row in search["table"]], None),
        ("Table IV: every architecture on the same test images",
         f"Accuracy and macro-F1 with 95% bootstrap intervals ({r.b.resamples:,} resamples); "
         "precision, recall and F1 are macro averages; AUC is the macro one-vs-rest ROC AUC; ECE over 15 confidence "
         f"bins; latency is one image at batch 1 (median of {r.b.latency_runs}), throughput at batch "
         "256, both on this CPU; training time is the run's own. Robustness: mean accuracy over "
         f"{len(r.b.corruptions or CORRUPTIONS)} corruptions x 5 severities, and accuracy under FGSM "
         "and PGD-10 at eps 0.1 (L-inf, pixels in [0, 1]). McNemar: exact "
         "test against the most accurate model.",
         ["model", "training", "accuracy [95% CI]", "precision", "recall", "F1 [95% CI]", "AUC", "ECE",
          "latency ms", "images/s", "train s", "params", "MACs", "corruptions", "FGSM / PGD 0.1",
          "McNemar vs best"], table_iv, None),
        ("McNemar's tests between chosen pairs",
         f"Paired on the {samples:,} test images: only images exactly one of the two models gets right count.",
         ["a", "b", "a right only", "b right only", "p", "accuracy a - b"], pairs, None),
        ("Loss curves", "Training and validation loss per epoch of every run.", [], [], "figures/curves.png"),
        ("Confusion matrices", f"Errors on the {samples:,} test images (rows = true class, the diagonal left "
         "blank).", [], [],
         "figures/confusions.png"),
        ("Published references (not run here)",
         "Other training setups, for context only. The seed paper's own table values are not reproduced here.",
         ["model", "test accuracy", "source"],
         [[p["model"], f"{p['accuracy']:.4f}", p["source"]] for p in r.compared.published], None),
    ]


def _row_iv(entry: Entry, rep: EvalReport, ranked: Ranked) -> list:
    ci, eff = rep.confidence_intervals, rep.efficiency
    robust = rep.robustness_report
    attacks = robust.attacks if robust else {}
    attacked = " / ".join(f"{attacks[a].get('0.1', float('nan')):.3f}" for a in ("fgsm", "pgd") if a in attacks)
    vs = ranked.vs_best
    return [entry.label, entry.note, format_interval(rep.accuracy, ci["accuracy"]), f"{rep.macro['precision']:.4f}",
            f"{rep.macro['recall']:.4f}", format_interval(rep.macro["f1"], ci["macro_f1"]), f"{rep.macro_auc:.5f}",
            f"{rep.calibration['ece']:.4f}", f"{eff['latency_ms']['p50']:.2f}",
            f"{eff['throughput']['images_per_second']:,.0f}",
            f"{_train_seconds(rep):.0f}",
            f"{eff['params']:,}", f"{eff['macs'] / 1e6:.1f}M",
            f"{robust.mean_corruption_accuracy:.3f}" if robust else "", attacked,
            "best" if vs is None else f"{format_p(vs['p_value'])} ({vs['a_only']} vs {vs['b_only']})"]


def _train_seconds(rep: EvalReport) -> float:
    """The training seconds in a run's report (0 for a run without a summary)."""
    summary = rep.run_summary
    return summary.train_seconds if summary else 0


def _answer(r: Paper) -> str:
    """The paper's question, "which architecture, at what cost", in sentences computed from the tables."""
    reports, board, labels = r.reports, r.compared.leaderboard, r.labels
    best = board[0]
    seconds = {n: _train_seconds(rep) for n, rep in reports.items()}
    latency = {n: rep.efficiency["latency_ms"]["p50"] for n, rep in reports.items()}
    tied = [e for e in board[1:] if e.vs_best["p_value"] >= 0.05]
    cheapest = min([best, *tied], key=lambda e: seconds[e.name])
    lines = [f"- Most accurate: **{labels[best.name]}**, {format_interval(best.accuracy, best.ci['accuracy'])}, "
             f"trained in {seconds[best.name]:.0f} s, {latency[best.name]:.2f} ms per image."]
    if tied:
        others = ", ".join(labels[e.name] for e in tied)
        lines.append(f"- Not significantly less accurate (McNemar p >= 0.05): {others}. The cheapest of these to "
                     f"train: **{labels[cheapest.name]}** "
                     f"({seconds[cheapest.name]:.0f} s, {reports[cheapest.name].accuracy:.4f}).")
    for p in r.compared.pairs:
        a, b = p["a"], p["b"]
        difference = reports[a].accuracy - reports[b].accuracy
        verdict = "a significant" if p["p_value"] < 0.05 else "no significant"
        lines.append(f"- {labels[a]} vs {labels[b]}: {_delta(difference)} points of accuracy, {verdict} difference "
                     f"(McNemar p = {format_p(p['p_value'])}); training {seconds[a]:.0f} s vs {seconds[b]:.0f} s, "
                     f"latency {latency[a]:.2f} vs {latency[b]:.2f} ms.")
    search = r.table_iii
    chosen = ", ".join(f"{k} {v}" for k, v in search["best"]["params"].items())
    lines.append(f"- Search (Table III): the best trial used {chosen}.")
    return "\n".join(lines)


def _means(trials_csv: Path, parameter: str) -> dict:
    """Mean validation value of the completed trials per tested value of `parameter`."""
    import csv

    groups: dict = {}
    with trials_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["state"] == "complete" and row.get(parameter):
                groups.setdefault(row[parameter], []).append(float(row["value"]))
    return {value: sum(v) / len(v) for value, v in sorted(groups.items(), key=lambda kv: float(kv[0]))}


def _delta(difference: float) -> str:
    return f"{100 * difference:+.2f}"


def _markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]) + "\n"


def command_line() -> str:
    """How this process was started, for the write-up."""
    return " ".join(shlex.quote(a) for a in ["imgclf", *sys.argv[1:]])
