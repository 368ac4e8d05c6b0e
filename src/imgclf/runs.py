"""`imgclf runs`: the run directories under a folder as rows (model, dataset, test accuracy, training time,
status, date), filtered, sorted and rendered. Reads only the files runs write; a damaged run is a row that says so."""

from __future__ import annotations

import csv
import io
import json
import operator
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from html import escape
from pathlib import Path

from imgclf.config import load_config, suggest
from imgclf.errors import ImgclfError, first_line
from imgclf.evaluate.report import Link, page, table
from imgclf.evaluate.stats import format_interval
from imgclf.rundir import read_meta
from imgclf.training.summary import RunSummary, StopReason

DEPTH = 3  # runs/<name>, runs/<study>/trial-NNNN, and one more level of grouping
MARKERS = ("config.yaml", "model.json")  # a folder with either is a run directory
WRITTEN = ("config.yaml", "state.pt", "metrics.csv", "summary.json")  # what training writes: the run's date


@dataclass(frozen=True)
class RunRow:
    """One run directory, as `imgclf runs` lists it (the JSON and CSV fields, in order)."""

    name: str  # path relative to the folder searched
    model: str | None
    dataset: str | None
    test_acc: float | None  # report.json's when evaluated on the run's test split, else summary.json's
    test_acc_low: float | None  # its 95% bootstrap interval (only from report.json)
    test_acc_high: float | None
    train_seconds: float | None
    status: str  # done, resumable, stopped, crashed, unknown or damaged
    reason: str  # why it stopped, or what is damaged ('' when it simply finished)
    date: str  # ISO time training last wrote to the folder
    report: str | None  # its report.html, relative to the folder searched


KEYS = {"name": "name", "model": "model", "dataset": "dataset", "acc": "test_acc", "time": "train_seconds",
        "status": "status", "date": "date"}  # --where and --sort keys -> RunRow fields
DESCENDING = {"acc", "date"}  # most accurate first, newest first; the others smallest / A-Z first
_OPS = {"=": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


class _Damaged(Exception):
    """A run file that cannot be read: the message names it and says what is wrong."""


def find_runs(folder: Path) -> list[Path]:
    """The run directories in `folder` (itself, or up to DEPTH levels down), never looking inside a run."""
    if not folder.is_dir():
        raise ImgclfError(f"{folder} is not a folder; pass the folder your runs are in (train's --out, "
                          "default runs).")

    def walk(path: Path, depth: int):
        if any((path / marker).is_file() for marker in MARKERS):
            yield path
        elif depth:
            for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
                yield from walk(child, depth - 1)

    return list(walk(folder, DEPTH))


def read_run(path: Path, folder: Path) -> RunRow:
    """The row of the run directory `path` (found in `folder`); a file it cannot read makes it 'damaged'."""
    name = path.relative_to(folder).as_posix() if path != folder else path.name
    report = (path / "report.html").relative_to(folder).as_posix() if (path / "report.html").is_file() else None
    stamps = [(path / f).stat().st_mtime for f in WRITTEN if (path / f).is_file()]
    date = datetime.fromtimestamp(max(stamps, default=path.stat().st_mtime)).astimezone().isoformat("T", "seconds")
    try:
        model, dataset = _model_and_dataset(path)
        summary = _read(path / "summary.json", RunSummary.read, path)
        status, reason = _status(summary, path)
        acc, interval = _test_accuracy(path, dataset, summary)
        seconds = summary.train_seconds if summary else _last_seconds(path)
    except _Damaged as err:
        return RunRow(name, None, None, None, None, None, None, "damaged", str(err), date, report)
    return RunRow(name, model, dataset, acc, *interval, seconds, status, reason, date, report)


def list_runs(folder: str | Path, where: Sequence[str] = (), sort: str = "date", reverse: bool = False) \
        -> list[RunRow]:
    """The runs under `folder` that match every --where condition, in --sort order (--reverse: the other way)."""
    folder = Path(folder)
    if not folder.exists():
        raise ImgclfError(f"{folder} does not exist; pass the folder your runs are in (train's --out, default runs).")
    paths = find_runs(folder)
    if not paths:
        raise ImgclfError(f"no run directories in {folder} (folders with {' or '.join(MARKERS)}, up to {DEPTH} "
                          "levels down); pass the folder `imgclf train` wrote into (its --out).")
    tests, field = [_condition(text) for text in where], _key(sort, "--sort")  # bad options: before any reading
    rows = [row for row in (read_run(p, folder) for p in paths) if all(test(row) for test in tests)]
    return _sorted(rows, field, (sort in DESCENDING) != reverse)


def runs_json(rows: list[RunRow]) -> str:
    """The rows as a JSON list of objects (RunRow's fields; numbers as numbers, missing values as null)."""
    return json.dumps([asdict(row) for row in rows], indent=2) + "\n"


def runs_csv(rows: list[RunRow]) -> str:
    """The rows as CSV with a header of RunRow's fields (missing values empty)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[f.name for f in fields(RunRow)], lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(row) for row in rows)
    return out.getvalue()


HEADERS = ["run", "model", "dataset", "test acc [95% CI]", "time", "status", "date"]


def runs_cells(row: RunRow) -> list[str]:
    """The table cells of a row: run, model, dataset, test accuracy [95% interval], time, status, date."""
    if row.test_acc is None:
        acc = ""
    elif row.test_acc_low is None:
        acc = f"{row.test_acc:.4f}"
    else:
        acc = format_interval(row.test_acc, (row.test_acc_low, row.test_acc_high))
    status = f"{row.status} ({row.reason})" if row.reason else row.status
    return [row.name, row.model or "", row.dataset or "", acc, duration(row.train_seconds), status,
            row.date[:16].replace("T", " ")]


def runs_html(rows: list[RunRow], folder: Path, html_file: Path) -> str:
    """One standalone page listing the rows, each run's name linking its report.html (relative to `html_file`)."""
    def named(row: RunRow) -> object:
        if row.report is None:
            return row.name
        return Link(row.name, os.path.relpath(folder.resolve() / row.report, html_file.resolve().parent))

    body = table(HEADERS, [[named(row), *runs_cells(row)[1:]] for row in rows])
    note = (f"<p class='note'>{len(rows)} run(s) in {escape(str(folder.resolve()))}; a run's name links its report "
            "(imgclf evaluate writes one).</p>")
    return page("imgclf runs", [("Runs", note + body)])


def duration(seconds: float | None) -> str:
    """9.3s, 4.1 min, 2.5 h; '' when unknown."""
    if seconds is None:
        return ""
    return f"{seconds:.1f}s" if seconds < 60 else f"{seconds / 60:.1f} min" if seconds < 3600 else \
        f"{seconds / 3600:.1f} h"


def _read(path: Path, reader, *args):
    """reader(*args), with any failure to read `path` turned into _Damaged naming the file."""
    try:
        return reader(*args)
    except (ImgclfError, OSError, ValueError, KeyError, TypeError) as err:
        raise _Damaged(f"{path.name}: {first_line(err)}") from err


def _model_and_dataset(path: Path) -> tuple[str | None, str | None]:
    """From config.yaml, else (a run with only a model) from model.json."""
    if (path / "config.yaml").is_file():
        config = _read(path / "config.yaml", load_config, path / "config.yaml")
        return config.model.name, config.data.dataset
    meta = _read(path / "model.json", read_meta, path / "model.json", "retrain or restore it from a backup")
    return meta["architecture"]["name"], meta.get("dataset")


def _status(summary: RunSummary | None, path: Path) -> tuple[str, str]:
    """(status, reason): done, resumable or stopped by summary.json's stop reason; crashed without one."""
    if summary is None:
        if (path / "state.pt").is_file() or (path / "metrics.csv").is_file():
            return "crashed", "no summary.json: killed, crashed or still training"
        return "unknown", "no summary.json, state.pt or metrics.csv"
    if summary.stopped.finished:
        return "done", "" if summary.stopped is StopReason.DONE else str(summary.stopped)
    resumable = summary.stopped is not StopReason.PRUNED and (path / "state.pt").is_file()
    return "resumable" if resumable else "stopped", str(summary.stopped)


def _test_accuracy(path: Path, dataset: str | None, summary: RunSummary | None) -> tuple[float | None, tuple]:
    """The test accuracy and its interval from report.json when it scored the run's own test split, else
    summary.json's (no interval)."""
    scored = _read(path / "report.json", _report_accuracy, path / "report.json", dataset) \
        if (path / "report.json").is_file() else None
    return scored or ((summary.test_acc if summary else None), (None, None))


def _report_accuracy(path: Path, dataset: str | None) -> tuple[float, tuple[float, float]] | None:
    """report.json's accuracy and 95% interval, if it scored `dataset`'s test split."""
    from imgclf.evaluate.evaluation import EvalReport  # plots and models: only for evaluated runs

    report = EvalReport.load(path)
    if report.split != "test" or report.dataset != dataset:
        return None
    low, high = report.confidence_intervals["accuracy"]
    return float(report.accuracy), (float(low), float(high))


def _last_seconds(path: Path) -> float | None:
    """Training time so far from metrics.csv's last row (a run without summary.json)."""
    if not (path / "metrics.csv").is_file():
        return None

    def last() -> float | None:
        with (path / "metrics.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        return float(rows[-1]["seconds"]) if rows else None

    return _read(path / "metrics.csv", last)


def _key(name: str, option: str) -> str:
    """The RunRow field of a --where/--sort key, or one clear error naming the keys."""
    if name not in KEYS:
        close = suggest(name, list(KEYS)) or next((key for key in KEYS if name.startswith(key)), None)  # accuracy
        raise ImgclfError(f"{option} {name!r} is not a run field" + (f"; did you mean {close}?" if close else ";")
                          + f" use one of {', '.join(KEYS)}.")
    return KEYS[name]


def _condition(text: str):
    """A --where condition such as dataset=mnist, status!=done or acc>0.9 as a test of a row."""
    match = re.fullmatch(r"\s*(\w+)\s*(!=|>=|<=|=|>|<)\s*(.*?)\s*", text)
    if not match:
        raise ImgclfError(f"--where {text!r} is not a condition; write KEY=VALUE (or !=, >, <, >=, <=), "
                          "e.g. dataset=mnist or acc>0.9.")
    field, compare, value = _key(match[1], "--where"), _OPS[match[2]], match[3]
    if field in ("test_acc", "train_seconds"):
        try:
            value = float(value)
        except ValueError:
            raise ImgclfError(f"--where {text!r}: {match[1]} is a number; compare it with one, "
                              f"e.g. {match[1]}>0.9.") from None
    return lambda row: getattr(row, field) is not None and compare(getattr(row, field), value)


def _sorted(rows: list[RunRow], field: str, descending: bool) -> list[RunRow]:
    """Rows by a field, those without a value last."""
    known = sorted((r for r in rows if getattr(r, field) is not None), key=lambda r: getattr(r, field),
                   reverse=descending)
    return known + [r for r in rows if getattr(r, field) is None]
