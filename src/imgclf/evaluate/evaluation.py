"""`imgclf evaluate`: a trained model on a labelled split -> every metric with its uncertainty, calibration,
efficiency and training history, written as report.json and a standalone report.html."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from imgclf.config import Config, load_config
from imgclf.data import Dataset, Preprocess, Split, TensorSplit, in_memory, load_dataset, membership, train_val
from imgclf.errors import ImgclfError
from imgclf.evaluate import metrics, plots
from imgclf.evaluate.report import render_report
from imgclf.evaluate.robustness_report import RobustnessReport
from imgclf.evaluate.stats import accuracy_and_f1_ci
from imgclf.models import Classifier, create_model, summarize
from imgclf.predict import predict_logits
from imgclf.rundir import atomic_write, preprocess_of, run_folder, update_meta
from imgclf.runtime import ExportedModel, device_for, open_model
from imgclf.training.summary import RunSummary

log = logging.getLogger(__name__)
GALLERY = 24  # misclassified images shown, highest loss first


@dataclass
class EvalData:
    """A labelled split to evaluate on, its labels mapped to the model's class order."""

    dataset: Dataset
    split: Split
    targets: np.ndarray  # (N,) indices into the model's classes
    name: str = "test"  # which split it is


def run_config(folder: Path) -> Config | None:
    """The config a run was trained with, if its folder has one."""
    return load_config(folder / "config.yaml") if (folder / "config.yaml").is_file() else None


def eval_data(folder: Path, meta: dict, source: str | None = None, data_dir: str | Path | None = None,
              split: str | None = None) -> EvalData:
    """The split to evaluate on: by default the run's own dataset (and data folder), split as in training;
    a folder of <class>/ images that the run was not trained on is evaluated whole, as its 'test' split.

    A run that recorded its files (data.json) reads exactly those, from `data_dir` or a `source` folder that
    holds them when the data has moved. 'val' is the run's own validation split (its fold, or the part carved
    from the training data)."""
    # an exported model outside its run finds the run's config through its provenance
    home = folder if (folder / "config.yaml").is_file() else Path(meta.get("source", {}).get("run", folder))
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
    if split == "val" and config is not None and not foreign:
        data = config.data
        chosen = train_val(dataset, data.subset, data.val_fraction, data.split_seed, data.folds, data.fold)[1]
        if chosen is None:
            raise ImgclfError(f"{folder} was trained without a validation split (data.val_fraction 0), so there "
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


def _calibrate(folder: Path, meta: dict, model: Classifier, device: torch.device, data_dir: str | Path | None,
               progress: bool) -> dict:
    """Fit a temperature on the run's validation split and save it into model.json."""
    data = eval_data(folder, meta, data_dir=data_dir, split="val")
    logits = predict_logits(model, data.split, preprocess_of(meta), device, progress=progress)
    temperature = metrics.fit_temperature(logits, data.targets)
    before = metrics.calibration(metrics.softmax(logits), data.targets)["ece"]
    after = metrics.calibration(metrics.softmax(logits, temperature), data.targets)["ece"]
    fitted = {"fitted_on": f"{data.dataset.name} validation split", "samples": len(data.targets),
              "val_ece_before": before, "val_ece_after": after,
              "fitted_at": datetime.now(timezone.utc).isoformat()}
    update_meta(folder, temperature=temperature, calibration=fitted)
    log.info("temperature %.4f fitted on %d validation images; saved into %s", temperature, len(data.targets),
             folder / "model.json")
    return {"temperature": temperature, **fitted}


def evaluate_run(run: str | Path, *, source: str | None = None, data_dir: str | Path | None = None,
                 split: str | None = None, calibrate: bool = False, resamples: int = 1000, seed: int = 0,
                 device: str = "auto", latency_runs: int = 100, out: str | Path | None = None,
                 progress: bool = False, tta: bool = False) -> tuple[dict, Path]:
    """Evaluate a run directory's model (or an exported model file); writes report.json and report.html into
    `out` (default: the run's folder) and returns the report and the HTML path. `tta` scores the mean of the
    logits of each image and its mirror image (test-time augmentation)."""
    model, meta = open_model(run)
    exported = isinstance(model, ExportedModel)
    folder, target = run_folder(run), device_for(model, device)
    if calibrate and exported:
        raise ImgclfError("--calibrate works on the run directory: calibrate it, then export again (the export "
                          "carries the temperature).")
    classes, pre = meta["classes"], preprocess_of(meta)
    data = eval_data(folder, meta, source, data_dir, split)
    data = replace(data, split=in_memory(data.split, pre))  # image files: decoded once, then from the cache
    logits = predict_logits(model.to(target), data.split, pre, target, progress=progress, tta=tta)
    own_data = data_dir if source is None or _same_source(source, meta.get("dataset")) else None
    fitted = _calibrate(folder, meta, model, target, own_data, progress) if calibrate else meta.get("calibration")
    temperature = fitted["temperature"] if calibrate else meta.get("temperature", 1.0)
    raw = metrics.softmax(logits)
    probs = metrics.softmax(logits, temperature)  # what predict and serve return
    report = metrics.classification_report(probs, data.targets, classes)
    curves = report.pop("curves")
    uncalibrated = metrics.calibration(raw, data.targets)
    predicted = probs.argmax(axis=1)
    robust = robustness_record(folder, meta)
    report.update({
        "run": str(folder), "model_file": str(run) if exported else str(folder / "model.safetensors"),
        "model": meta["architecture"]["name"], "dataset": data.dataset.name, "split": data.name,
        "classes": classes, "created": datetime.now(timezone.utc).isoformat(),
        "confidence_intervals": {"level": 0.95, "resamples": resamples, "seed": seed,
                                 **accuracy_and_f1_ci(data.targets, predicted, len(classes), resamples, seed)},
        "temperature": {"value": temperature, "fitted": fitted, "ece_uncalibrated": uncalibrated["ece"],
                        "log_loss_uncalibrated": metrics.log_loss(raw, data.targets)},
        "efficiency": efficiency(model, meta, folder, data.split, target, latency_runs),
        "training": training_record(folder),
        "misclassified": _misclassified(probs, data.targets, classes),
        "robustness": None if robust is None else {**robust.to_json(), "headline": robust.headline.to_json()},
        "tta": tta, "notes": input_notes(data.split, pre) + (
            ["scored with test-time augmentation: the mean of each image's and its mirror image's logits (latency "
             "and throughput are of one pass)"] if tta else []),
    })
    figures = _figures(report, curves, uncalibrated, data, pre)
    out = Path(out) if out else folder / f"report-{Path(run).name}" if exported else folder  # keep the run's own
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "report.json", lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
    atomic_write(out / "report.html", lambda tmp: tmp.write_text(render_report(report, figures)))
    return report, out / "report.html"


def _misclassified(probs: np.ndarray, targets: np.ndarray, classes: list[str]) -> list[dict]:
    """Wrong predictions with the highest loss first (the most confidently wrong)."""
    predicted = probs.argmax(axis=1)
    loss = -np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-15, 1))
    wrong = np.flatnonzero(predicted != targets)
    return [{"index": int(i), "true": classes[targets[i]], "predicted": classes[predicted[i]],
             "confidence": float(probs[i, predicted[i]]), "loss": float(loss[i])}
            for i in wrong[np.argsort(-loss[wrong], kind="stable")][:GALLERY]]


def _figures(report: dict, curves: dict, uncalibrated: dict, data: EvalData, pre: Preprocess) -> dict[str, bytes]:
    """The report's plots as PNG bytes, by section."""
    classes, history = report["classes"], report["training"]["history"]
    calibrated = report["temperature"]["value"] != 1.0
    figures = {
        "confusion": plots.confusion_plot(report["confusion"], classes, "confusion matrix (counts)", ".0f"),
        "confusion_normalized": plots.confusion_plot(report["confusion_normalized"], classes,
                                                     "confusion matrix (share of each true class)", ".2f"),
        "roc": plots.curves_plot(curves["roc"], classes, "roc", report["auc"], curves["micro_roc"]),
        "pr": plots.curves_plot(curves["pr"], classes, "pr", report["average_precision"]),
        "reliability": plots.reliability_plot(uncalibrated["bins"], uncalibrated["ece"],
                                              report["calibration"]["bins"] if calibrated else None,
                                              report["calibration"]["ece"] if calibrated else None),
    }
    if history:
        figures["curves"] = plots.training_curves(history)
    if report["robustness"]:
        figures["robustness"] = plots.robustness_plot(RobustnessReport.from_json(report["robustness"]))
    if report["misclassified"]:
        shown = report["misclassified"]
        images = [pre.prepare(data.split[m["index"]][0]).numpy() for m in shown]
        figures["misclassified"] = plots.gallery(
            images, [f"{m['true']} -> {m['predicted']} ({m['confidence']:.2f})" for m in shown])
    return figures
