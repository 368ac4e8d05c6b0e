"""`imgclf evaluate`: a trained model on a labelled split -> every metric with its uncertainty, calibration,
efficiency and training history, written as report.json and a standalone report.html.

In three steps: load (open_run, on the data a ScoreOn names), compute (predict -> Predictions, then
evaluate -> EvalReport; compare.compare takes the same Predictions) and write (write_report)."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from imgclf import openset
from imgclf.config import Config, load_config
from imgclf.data import (
    Dataset,
    Preprocess,
    Split,
    TensorSplit,
    in_memory,
    load_dataset,
    load_unlabelled,
    membership,
    train_val,
)
from imgclf.errors import DataError, ImgclfError
from imgclf.evaluate import metrics, plots
from imgclf.evaluate.report import render_report
from imgclf.evaluate.results import Result
from imgclf.evaluate.robustness_report import RobustnessReport
from imgclf.evaluate.stats import accuracy_and_f1_ci
from imgclf.models import Classifier, create_model, summarize
from imgclf.predict import predict_logits
from imgclf.rundir import atomic_write, preprocess_of, run_folder, update_meta
from imgclf.runtime import ExportedModel, device_for, open_model
from imgclf.tracking import OFF, Tracker, open_tracker
from imgclf.training.summary import RunSummary

log = logging.getLogger(__name__)
GALLERY = 24  # misclassified images shown, highest loss first


class NoValidation(ImgclfError):
    """The run was trained without a validation split."""


@dataclass
class EvalData:
    """A labelled split to evaluate on, its labels mapped to the model's class order."""

    dataset: Dataset
    split: Split
    targets: np.ndarray  # (N,) indices into the model's classes
    name: str = "test"  # which split it is


@dataclass(frozen=True)
class ScoreOn:
    """What data to score a model on, and where: shared by evaluate, compare and robustness."""

    source: str | None = None  # a dataset name or folder:PATH; None: the run's own data
    data_dir: str | Path | None = None  # where that data is (the run's own data, moved)
    split: str | None = None  # None: test (val where the data has no test split)
    device: str = "auto"


@dataclass
class OpenRun:
    """A model (a run directory, or an exported model file) loaded, with the labelled split it is scored on."""

    path: Path  # as given: a run directory, a file in it, or an exported model file
    model: Classifier | ExportedModel
    meta: dict  # model.json (or the export's JSON)
    data: EvalData
    data_fingerprint: str  # fingerprint() of the split as read (before decoding or resizing)
    device: torch.device
    on: ScoreOn

    @property
    def folder(self) -> Path:
        return run_folder(self.path)

    @property
    def exported(self) -> bool:
        return isinstance(self.model, ExportedModel)

    @property
    def name(self) -> str:
        """How a leaderboard calls it: the run's folder name, with the file's name for a file."""
        return self.folder.name if self.path.is_dir() else f"{self.folder.name}/{self.path.name}"

    @property
    def fingerprint(self) -> str:
        """A digest of what its scores depend on: the weights (sha256), the scored images and the temperature."""
        parts = (self.meta["sha256"], self.data_fingerprint, repr(self.meta.get("temperature", 1.0)))
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def open_run(run: str | Path, on: ScoreOn = ScoreOn()) -> OpenRun:
    """A run's model (or an exported model file) and the split it is scored on, as `on` says."""
    model, meta = open_model(run)
    data = eval_data(run_folder(run), meta, on.source, on.data_dir, on.split)
    return OpenRun(Path(run), model, meta, data, fingerprint(data.split), device_for(model, on.device), on)


@dataclass
class Predictions:
    """A model's logits on every image of its split, and its speed there: what reports and comparisons use."""

    run: OpenRun
    logits: np.ndarray  # (N, K), in the order of run.data
    efficiency: dict  # parameters, FLOPs, file size, latency and throughput (see efficiency())
    tta: bool  # the logits are means over each image and its mirror image

    @property
    def targets(self) -> np.ndarray:
        return self.run.data.targets


@dataclass
class EvalReport(Result):
    """Everything imgclf evaluate measures; saved as report.json (the fields are its keys, in order)."""

    samples: int
    accuracy: float
    top_k: dict  # k, accuracy
    log_loss: float
    macro: dict  # precision, recall, f1 (macro averages)
    weighted: dict
    per_class: list[dict]  # class, precision, recall, f1, support
    confusion: list[list[int]]  # (K, K), rows = true class
    confusion_normalized: list[list[float]]
    auc: list[float | None]  # one-vs-rest ROC AUC per class (None: undefined)
    macro_auc: float | None
    micro_auc: float | None
    average_precision: list[float | None]
    macro_average_precision: float | None
    calibration: dict  # ece, bins (at the served temperature)
    most_confused: list[dict]
    fairness: dict  # worst/best class and accuracy, gap
    run: str  # the run's folder
    model_file: str
    model: str  # architecture name
    dataset: str
    split: str
    classes: list[str]
    created: str  # ISO time
    confidence_intervals: dict  # level, resamples, seed, accuracy, macro_f1
    temperature: dict  # value, fitted, ece_uncalibrated, log_loss_uncalibrated
    efficiency: dict
    training: dict  # summary, history
    misclassified: list[dict]  # highest loss first
    robustness: dict | None  # robustness.json of these weights, with a headline
    tta: bool = False
    notes: list[str] = field(default_factory=list)
    fingerprint: str | None = None  # OpenRun.fingerprint of what was scored (None: not recorded)
    unknown: dict | None = None  # unknown_section(): rejection on these images and against out-of-distribution ones

    @property
    def run_summary(self) -> RunSummary | None:
        """The run's summary.json when it was evaluated (None: it had none)."""
        return RunSummary.from_json(self.training["summary"]) if self.training["summary"] else None

    @property
    def robustness_report(self) -> RobustnessReport | None:
        """The robustness results of these weights (None: not measured)."""
        return RobustnessReport.from_json(self.robustness) if self.robustness else None


def run_config(folder: Path) -> Config | None:
    """The config a run was trained with, if its folder has one."""
    return load_config(folder / "config.yaml") if (folder / "config.yaml").is_file() else None


def eval_data(folder: Path, meta: dict, source: str | None = None, data_dir: str | Path | None = None,
              split: str | None = None) -> EvalData:
    """The split to evaluate on: by default the run's own dataset (and data folder), split as in training;
    a folder of <class>/ images that the run was not trained on is evaluated whole, as its 'test' split.

    A run that recorded its files (data.json) reads exactly those, from `data_dir` or a `source` folder that
    holds them when the data has moved. 'val' is the run's own validation split (its fold, or the part carved
    from the training data), 'train' what it trained on beside it."""
    # an exported model outside its run finds the run's config through its provenance
    home = _home(folder, meta)
    config = run_config(home)
    own = meta.get("dataset") or (config.data.dataset if config else None)
    if (source or own) is None:
        raise ImgclfError(f"{folder} does not say which dataset it was trained on; add \"dataset\": \"NAME\" (or "
                          "\"folder:PATH\") to its model.json, or score it with imgclf evaluate --dataset NAME or "
                          "--data folder:PATH.")
    recorded = membership.read(home)
    root = _recorded_root(recorded, source, data_dir) if recorded else None
    if root is not None:
        return _recorded_split(recorded, root, meta, split)
    foreign = source is not None and not _same_source(source, own)
    if own and own.startswith("folder:") and not foreign and data_dir is not None:
        source = f"folder:{data_dir}"  # the run's image folder, moved
    elif data_dir is None and not foreign and config and config.data.data_dir and Path(config.data.data_dir).is_dir():
        data_dir = config.data.data_dir
    whole = foreign and source.startswith("folder:")  # another plain <class>/ folder: all of it is test data
    dataset = load_dataset(source or own, data_dir,
                           fractions={"test": 1.0} if whole else config.data.fractions() if config else None,
                           seed=config.data.split_seed if config else 0)
    split = split or _default_split(dataset.name, dataset.splits)
    if split in ("train", "val") and config is not None and not foreign:  # the parts the run trained on
        data = config.data
        chosen = train_val(dataset, data.subset, data.val_fraction, data.split_seed, data.folds,
                           data.fold)[split == "val"]
        if chosen is None:
            raise NoValidation(f"{folder} was trained without a validation split (data.val_fraction 0), so there "
                              "is no held-out data for it (calibration must not be fitted on the test split); "
                              "train with --data.val_fraction 0.1.")
    elif split in dataset.splits:
        chosen = dataset.splits[split]
    else:
        raise ImgclfError(f"{dataset.name} has no {split!r} split; it has {', '.join(dataset.splits)}.")
    if len(chosen) == 0:
        raise ImgclfError(f"the {split} split of {dataset.name} is empty; give it images, or score another "
                          "split with imgclf evaluate --split.")
    return EvalData(dataset, chosen, _model_labels(dataset, meta["classes"], chosen), split)


def _home(folder: Path, meta: dict) -> Path:
    """The run directory holding the config and data.json: the model's own, or an export's source run."""
    return folder if (folder / "config.yaml").is_file() else Path(meta.get("source", {}).get("run", folder))


def _default_split(name: str, splits) -> str:
    """test, or val for data with only train/ and val/ folders (with a warning: it is an optimistic figure)."""
    if "test" in splits:
        return "test"
    log.warning("%s has no test split: scoring the validation split, which also picked the run's best epoch (an "
                "optimistic figure; add a test/ folder for an unbiased one)", name)
    return "val"


def _recorded_root(recorded: dict, source: str | None, data_dir: str | Path | None) -> Path | None:
    """Where the run's recorded files are now: `data_dir`, a `source` folder that holds them, or where they were
    at training; None when `source` is other data."""
    if source is not None:
        path = Path(source.removeprefix("folder:")).expanduser()
        if not source.startswith("folder:") or not path.is_dir() or not membership.holds(recorded, path):
            return None
        log.info("%s holds the run's own files: scoring the split the run recorded", path)
        return path
    root = Path(data_dir).expanduser() if data_dir is not None else Path(recorded["root"])
    if not root.is_dir():
        raise ImgclfError(f"the run's image folder {root} is not there (it was {recorded['root']} at training); "
                          "pass --data-dir PATH with the folder's place now.")
    return root


def _recorded_split(recorded: dict, root: Path, meta: dict, split: str | None) -> EvalData:
    """The split the run recorded, read from `root` and checked against the recorded hashes."""
    name = f"folder:{root}"
    split = split or _default_split(name, recorded["splits"])
    if split not in recorded["splits"]:
        raise ImgclfError(f"the run has no {split!r} split; it has {', '.join(recorded['splits'])}.")
    chosen = membership.restore(recorded, split, root)
    dataset = Dataset(name, recorded["classes"], {split: chosen})
    return EvalData(dataset, chosen, _model_labels(dataset, meta["classes"], chosen), split)


def _same_source(a: str | None, b: str | None) -> bool:
    """Whether two dataset sources name the same data (folder paths compared resolved)."""
    if a is None or b is None:
        return a == b
    if a.startswith("folder:") and b.startswith("folder:"):
        return Path(a[7:]).expanduser().resolve() == Path(b[7:]).expanduser().resolve()
    return a.lower() == b.lower()


def fingerprint(split: Split) -> str:
    """A digest of a split's images (pixels, or file paths) and labels: equal only for the same samples."""
    digest = hashlib.sha256(split.labels.numpy().tobytes())
    if isinstance(split, TensorSplit):
        digest.update(split.images.numpy().tobytes())
    else:
        digest.update("\n".join(str(p.resolve()) for p in split.paths).encode())
    return digest.hexdigest()


def _model_labels(dataset: Dataset, classes: list[str], split: Split) -> np.ndarray:
    """The split's labels as indices into the model's classes; data with classes the model lacks is an error."""
    labels = split.labels.numpy()
    if dataset.classes == classes:
        return labels
    unknown = [c for c in dataset.classes if c not in classes]
    if unknown:
        raise ImgclfError(f"{dataset.name} has classes the model was not trained on ({', '.join(unknown[:5])}"
                          f"{' ...' if len(unknown) > 5 else ''}); the model knows {', '.join(classes[:20])}. "
                          "Evaluate on data whose class folders are among the model's classes.")
    return np.array([classes.index(c) for c in dataset.classes])[labels]


def input_notes(split: Split, preprocess: Preprocess) -> list[str]:
    """What preprocessing has to change to feed this data to the model (said in the report, not an error)."""
    if not isinstance(split, TensorSplit):
        return []  # files may differ one by one; each is converted as it is read
    channels, height, width = split.images.shape[1:]
    notes = []
    if channels != preprocess.channels:
        notes.append(f"images have {channels} channel(s), the model takes {preprocess.channels}: converted")
    if (height, width) != tuple(preprocess.size):
        notes.append(f"images are {height}x{width}, the model takes {preprocess.size[0]}x{preprocess.size[1]}: resized")
    return notes


def timings(model: Classifier, x: torch.Tensor, runs: int) -> np.ndarray:
    """Milliseconds per forward pass over `runs` passes, after warm-up passes."""
    sync = {"cuda": torch.cuda.synchronize, "mps": lambda: torch.mps.synchronize()}.get(x.device.type, lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(runs + max(2, runs // 10)):
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            if i >= max(2, runs // 10):
                times.append((time.perf_counter() - start) * 1000)
    return np.array(times)


def efficiency(model: Classifier, meta: dict, folder: Path, split: Split, device: torch.device,
               runs: int = 100, batch: int = 256) -> dict:
    """Parameters, FLOPs, file size, latency at batch 1 (percentiles) and throughput at `batch`, timed on
    the first image of `split` on `device` with torch's current number of threads."""
    pre = preprocess_of(meta)
    model.to(device).eval()
    shape = (pre.channels, *pre.size)
    if isinstance(model, ExportedModel):  # sized from its architecture, timed as exported
        arch = dict(meta["architecture"])
        with torch.device("meta"):
            summary = summarize(create_model(arch.pop("name"), **arch), shape)
    else:
        summary = summarize(model, shape)
    example = pre(split[0][0].unsqueeze(0)).to(device)  # (1, C, H, W), model-ready
    single = timings(model, example, runs)
    many = timings(model, example.expand(batch, -1, -1, -1).contiguous(), max(3, runs // 20))
    return {"params": summary.total, "macs": summary.macs, "flops": 2 * summary.macs,
            "file_mb": round(getattr(model, "path", folder / "model.safetensors").stat().st_size / 2**20, 3),
            "device": str(device), "threads": torch.get_num_threads(),
            "latency_ms": {"p50": float(np.percentile(single, 50)), "p95": float(np.percentile(single, 95)),
                           "p99": float(np.percentile(single, 99)), "mean": float(single.mean()), "runs": runs},
            "throughput": {"batch": batch, "images_per_second": float(batch / np.median(many) * 1000)}}


def training_record(folder: Path) -> dict:
    """The run's summary.json and metrics.csv rows (numbers as floats), where present."""
    summary = RunSummary.read(folder)
    record: dict = {"summary": summary.to_json() if summary else {}, "history": []}
    if (folder / "metrics.csv").is_file():
        with (folder / "metrics.csv").open(newline="") as f:
            record["history"] = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return record


def robustness_record(folder: Path, meta: dict) -> RobustnessReport | None:
    """The run's robustness.json (written by imgclf robustness), if it measured these weights."""
    path = folder / "robustness.json"
    if not path.is_file():
        return None
    try:
        report = RobustnessReport.from_json(json.loads(path.read_text()))
        report.headline  # noqa: B018 -- eps that are not numbers fail here, not later in a report
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("%s is damaged and left out of the report; run imgclf robustness again", path)
        return None
    if report.sha256 != meta.get("sha256"):
        log.warning("%s measured other weights than %s's and is left out; run imgclf robustness again", path, folder)
        return None
    return report


def _number(text: str | None) -> float | None:
    """A metrics.csv cell as a float; empty or non-finite cells as None (JSON has no NaN)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def calibrate_run(run: OpenRun, progress: bool = False) -> dict:
    """Fit a temperature on the run's validation split; saves it into model.json and into `run.meta`."""
    if run.exported:
        raise ImgclfError("--calibrate works on the run directory: calibrate it, then export again (the export "
                          "carries the temperature).")
    data = own_split(run, "val")
    logits = predict_logits(run.model.to(run.device), data.split, preprocess_of(run.meta), run.device,
                            progress=progress)
    fitted = metrics.calibrate(logits, data.targets)
    temperature = fitted.pop("temperature")
    fitted.update(fitted_on=f"{data.dataset.name} validation split", fitted_at=datetime.now(timezone.utc).isoformat())
    update_meta(run.folder, temperature=temperature, calibration=fitted)
    log.info("temperature %.4f fitted on %d validation images; saved into %s", temperature, len(data.targets),
             run.folder / "model.json")
    run.meta.update(temperature=temperature, calibration={"temperature": temperature, **fitted})
    return run.meta["calibration"]


def own_split(run: OpenRun, split: str) -> EvalData:
    """A split of the run's own data (train or val: fitting never uses the test split), wherever `run.on` says
    that data is now."""
    on = run.on
    recorded = membership.read(_home(run.folder, run.meta)) if on.source else None
    moved = _recorded_root(recorded, on.source, None) if recorded else None  # --data naming the run's data moved
    own_data = moved or (on.data_dir if on.source is None or _same_source(on.source, run.meta.get("dataset"))
                         else None)
    return eval_data(run.folder, run.meta, data_dir=own_data, split=split)


def fit_unknown(run: OpenRun) -> openset.OpenSet:
    """Fit unknown-input detection on the run's training and validation images; saves open_set.safetensors."""
    if run.exported:
        raise ImgclfError("--fit-unknown works on the run directory: unknown-input detection needs the PyTorch "
                          "model's features.")
    config = run_config(run.folder)
    method = config.train.open_set if config and config.train.open_set != "off" else openset.METHODS[0]
    try:
        val = own_split(run, "val").split
    except NoValidation:
        val = None  # fit() holds back some training images instead
    pre = preprocess_of(run.meta)
    fitted = openset.fit(run.model.to(run.device), own_split(run, "train").split, val, pre, run.device,
                         model_sha256=run.meta["sha256"], method=method, seed=config.train.seed if config else 0)
    fitted.save(run.folder)
    return fitted


def unknown_section(predictions: Predictions, ood: tuple[str, ...] = (), rate: float | None = None) -> dict | None:
    """How the run's unknown-input detection treats the scored images (the share it rejects, the accuracy on the
    rest) and, for each source in `ood` (folder:PATH or a dataset name), how well every score tells those
    images from the scored ones (AUROC, FPR at 95% TPR). None for a run without a fitted detector."""
    run = predictions.run
    fitted = None if run.exported else openset.load(run.folder, run.meta)
    if fitted is None:
        if ood or rate is not None:
            raise ImgclfError(f"{run.path} has no unknown-input detection to score: " + (
                "an exported model has none (evaluate the run directory)." if run.exported else
                f"fit it with imgclf evaluate {run.folder} --fit-unknown."))
        return None
    fitted = fitted.with_rate(rate)
    pre = preprocess_of(run.meta)
    known = openset.score_split(run.model, in_memory(run.data.split, pre), pre, run.device, fitted)
    threshold = fitted.threshold()
    rejected = known[fitted.method] > threshold
    correct = predictions.logits.argmax(axis=1) == predictions.targets
    section = {**fitted.describe(), "rejected": float(rejected.mean()),
               "accepted_accuracy": float(correct[~rejected].mean()) if (~rejected).any() else None,
               "rejected_accuracy": float(correct[rejected].mean()) if rejected.any() else None, "ood": []}
    for source in ood:
        images = ood_images(source, pre)
        scores = openset.score_split(run.model, images, pre, run.device, fitted)
        section["ood"].append({"source": source, "images": len(images),
                               "rejected": float((scores[fitted.method] > threshold).mean()),
                               **{m: openset.separation(known[m], scores[m]) for m in fitted.methods}})
    return section


def ood_images(source: str, preprocess: Preprocess, limit: int = 10_000, seed: int = 0) -> TensorSplit:
    """Images the model was not trained on, at its input size: every readable image under a folder:PATH (any
    layout; up to `limit`, a seeded sample beyond), or a named dataset's test split."""
    if not source.startswith("folder:"):
        split = load_dataset(source).split("test")
        return in_memory(split.take(np.arange(min(limit, len(split)))), preprocess, True)
    root = Path(source[7:]).expanduser()
    if not root.is_dir():
        raise ImgclfError(f"--ood {source}: {root} is not a folder; pass folder:PATH with PATH a folder of images.")
    try:
        found = load_unlabelled(root)  # any layout; files that are not images are left out with a warning
    except DataError:
        raise ImgclfError(f"--ood {source}: no readable images under {root}; pass a folder of image files.") from None
    if len(found) > limit:
        found = found.take(np.sort(np.random.default_rng(seed).choice(len(found), limit, replace=False)))
    return in_memory(found, preprocess, True)


def predict(run: OpenRun, *, latency_runs: int = 100, tta: bool = False, progress: bool = False) -> Predictions:
    """The model's logits on every image of its split, and its speed timed there (see efficiency). `tta` scores
    the mean of the logits of each image and its mirror image (test-time augmentation)."""
    pre = preprocess_of(run.meta)
    split = in_memory(run.data.split, pre)  # image files: decoded once for the logits and the timing
    logits = predict_logits(run.model.to(run.device), split, pre, run.device, progress=progress, tta=tta)
    return Predictions(run, logits, efficiency(run.model, run.meta, run.folder, split, run.device, latency_runs), tta)


def evaluate(predictions: Predictions, *, resamples: int = 1000, seed: int = 0) -> EvalReport:
    """Every metric of a model's predictions, with bootstrap intervals, calibration, speed and training history."""
    run, logits, targets = predictions.run, predictions.logits, predictions.targets
    classes, data = run.meta["classes"], run.data
    temperature = run.meta.get("temperature", 1.0)
    raw = metrics.softmax(logits)
    probs = metrics.softmax(logits, temperature)  # what predict and serve return
    scored = metrics.classification_report(probs, targets, classes)
    del scored["curves"]  # drawn by the HTML writer
    robust = robustness_record(run.folder, run.meta)
    return EvalReport(
        **scored, run=str(run.folder),
        model_file=str(run.path) if run.exported else str(run.folder / "model.safetensors"),
        model=run.meta["architecture"]["name"], dataset=data.dataset.name, split=data.name, classes=classes,
        created=datetime.now(timezone.utc).isoformat(),
        confidence_intervals={"level": 0.95, "resamples": resamples, "seed": seed, **accuracy_and_f1_ci(
            targets, probs.argmax(axis=1), len(classes), resamples, seed)},
        temperature={"value": temperature, "fitted": run.meta.get("calibration"),
                     "ece_uncalibrated": metrics.calibration(raw, targets)["ece"],
                     "log_loss_uncalibrated": metrics.log_loss(raw, targets)},
        efficiency=predictions.efficiency, training=training_record(run.folder),
        misclassified=misclassified(probs, targets, classes),
        robustness=None if robust is None else {**robust.to_json(), "headline": robust.headline.to_json()},
        tta=predictions.tta, notes=input_notes(data.split, preprocess_of(run.meta)) + (
            ["scored with test-time augmentation: the mean of each image's and its mirror image's logits (latency "
             "and throughput are of one pass)"] if predictions.tta else []),
        fingerprint=run.fingerprint)


def write_report(report: EvalReport, predictions: Predictions, out: Path) -> Path:
    """report.json and the standalone report.html (plots drawn from the predictions) into `out`; the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    report.save(out / "report.json")
    html = render_report(report, _figures(report, predictions))
    atomic_write(out / "report.html", lambda tmp: tmp.write_text(html))
    return out / "report.html"


def evaluate_run(run: str | Path, on: ScoreOn = ScoreOn(), *, calibrate: bool = False, resamples: int = 1000,
                 seed: int = 0, latency_runs: int = 100, out: str | Path | None = None, progress: bool = False,
                 tta: bool = False, fit_unknown_inputs: bool = False, ood: tuple[str, ...] = (),
                 unknown_rate: float | None = None) -> tuple[EvalReport, Path]:
    """`imgclf evaluate`: open, (calibrate, fit unknown-input detection,) predict, evaluate and write report.json
    and report.html into `out` (default: the run's folder; beside it for an exported model); returns the report
    and the HTML path. `ood`: sources of out-of-distribution images to test the unknown-input detection on."""
    opened = open_run(run, on)
    if calibrate:
        calibrate_run(opened, progress)
    if fit_unknown_inputs:
        fit_unknown(opened)
    predictions = predict(opened, latency_runs=latency_runs, tta=tta, progress=progress)
    report = evaluate(predictions, resamples=resamples, seed=seed)
    report.unknown = unknown_section(predictions, ood, unknown_rate)
    folder = opened.folder
    out = Path(out) if out else folder / f"report-{opened.path.name}" if opened.exported else folder
    html = write_report(report, predictions, out)
    if not opened.exported:
        track_report(report, folder, [html, out / "report.json"])
    return report, html


def run_tracker(folder: Path) -> tuple[Tracker, int]:
    """The trackers the run in `folder` was trained with (OFF for none), for a later command to add to; and the
    run's last step."""
    config, summary = run_config(folder), RunSummary.read(folder)
    if config is None or not config.track:
        return OFF, 0
    return (open_tracker(config, folder, run_id=summary.mlflow_run_id if summary else None, ended=True),
            summary.steps if summary else 0)


def track_report(report: EvalReport, folder: Path, files: list[Path]) -> None:
    """Add the report's headline metrics with their 95% intervals, and its `files`, to the trackers the run was
    trained with (if any), at its last step."""
    tracker, step = run_tracker(folder)
    ci, prefix = report.confidence_intervals, f"evaluate/{report.dataset}/{report.split}"
    tracker.scalars(step, {
        f"{prefix}/accuracy": report.accuracy, f"{prefix}/accuracy_low": ci["accuracy"][0],
        f"{prefix}/accuracy_high": ci["accuracy"][1], f"{prefix}/macro_f1": report.macro["f1"],
        f"{prefix}/macro_f1_low": ci["macro_f1"][0], f"{prefix}/macro_f1_high": ci["macro_f1"][1],
        f"{prefix}/top_{report.top_k['k']}_accuracy": report.top_k["accuracy"], f"{prefix}/log_loss": report.log_loss,
        f"{prefix}/ece": report.calibration["ece"]})
    tracker.files(files)
    tracker.close()


def misclassified(probs: np.ndarray, targets: np.ndarray, classes: list[str], limit: int = GALLERY) -> list[dict]:
    """The `limit` wrong predictions with the highest loss, highest first (the most confidently wrong)."""
    predicted = probs.argmax(axis=1)
    loss = -np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-15, 1))
    wrong = np.flatnonzero(predicted != targets)
    return [{"index": int(i), "true": classes[targets[i]], "predicted": classes[predicted[i]],
             "confidence": float(probs[i, predicted[i]]), "loss": float(loss[i])}
            for i in wrong[np.argsort(-loss[wrong], kind="stable")][:limit]]


def _figures(report: EvalReport, predictions: Predictions) -> dict[str, bytes]:
    """The report's plots as PNG bytes, by section."""
    classes, history, temperature = report.classes, report.training["history"], report.temperature["value"]
    curves = metrics.roc_pr(metrics.softmax(predictions.logits, temperature), predictions.targets)["curves"]
    uncalibrated = metrics.calibration(metrics.softmax(predictions.logits), predictions.targets)
    calibrated = temperature != 1.0
    figures = {
        "confusion": plots.confusion_plot(report.confusion, classes, "confusion matrix (counts)", ".0f"),
        "confusion_normalized": plots.confusion_plot(report.confusion_normalized, classes,
                                                     "confusion matrix (share of each true class)", ".2f"),
        "roc": plots.curves_plot(curves["roc"], classes, "roc", report.auc, curves["micro_roc"]),
        "pr": plots.curves_plot(curves["pr"], classes, "pr", report.average_precision),
        "reliability": plots.reliability_plot(uncalibrated["bins"], uncalibrated["ece"],
                                              report.calibration["bins"] if calibrated else None,
                                              report.calibration["ece"] if calibrated else None),
    }
    if history:
        figures["curves"] = plots.training_curves(history)
    if report.robustness:
        figures["robustness"] = plots.robustness_plot(report.robustness_report)
    if report.misclassified:
        shown, pre, split = report.misclassified, preprocess_of(predictions.run.meta), predictions.run.data.split
        images = [pre.prepare(split[m["index"]][0]).numpy() for m in shown]
        figures["misclassified"] = plots.gallery(
            images, [f"{m['true']} -> {m['predicted']} ({m['confidence']:.2f})" for m in shown])
    return figures
