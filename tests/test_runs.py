"""imgclf runs on a folder of copies of a real MNIST run: evaluated, stopped, crashed, damaged, another dataset."""

import csv
import dataclasses
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from imgclf.cli import main
from imgclf.config import load_config, with_overrides
from imgclf.evaluate.evaluation import evaluate_run
from imgclf.training import RunSummary, StopReason

NAMES = ["crashed", "damaged", "damaged-yaml", "digits", "evaluated", "plain", "study/trial-0000"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, mnist_run) -> Path:
    """Runs as imgclf leaves them, made from copies of one real run."""
    root = tmp_path_factory.mktemp("listed")
    for name in NAMES:
        shutil.copytree(mnist_run, root / name)
    evaluate_run(root / "evaluated", resamples=20, latency_runs=1)
    (root / "evaluated" / "inner").mkdir()  # a run's own subfolder is never taken for a run
    shutil.copy(mnist_run / "config.yaml", root / "evaluated" / "inner")
    (root / "crashed" / "summary.json").unlink()
    (root / "damaged" / "summary.json").write_text("{not json")
    (root / "damaged-yaml" / "config.yaml").write_text("data: [mnist\n")
    trial = root / "study" / "trial-0000"
    stopped = dataclasses.replace(RunSummary.read(trial), stopped=StopReason.TIME, test_acc=None)
    stopped.save(trial / "summary.json")
    config = load_config(root / "digits" / "config.yaml")
    with_overrides(config, {"data.dataset": "digits"}).save(root / "digits" / "config.yaml")
    return root


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["runs", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


def _json(capsys, *args: str) -> dict[str, dict]:
    status, out, _ = _cli(capsys, *args, "--format", "json")
    assert status == 0
    return {row["name"]: row for row in json.loads(out)}


def test_every_run_is_listed_with_its_status_accuracy_and_interval(folder, capsys):
    rows = _json(capsys, folder)
    assert sorted(rows) == NAMES  # trial folders found, the evaluated run's inner/ folder not
    report = json.loads((folder / "evaluated" / "report.json").read_text())
    summary = json.loads((folder / "plain" / "summary.json").read_text())
    evaluated = rows["evaluated"]
    assert evaluated["test_acc"] == report["accuracy"]
    assert [evaluated["test_acc_low"], evaluated["test_acc_high"]] == report["confidence_intervals"]["accuracy"]
    assert evaluated["report"] == "evaluated/report.html"
    plain = rows["plain"]
    assert plain["test_acc"] == summary["test_acc"] and plain["test_acc_low"] is None
    assert plain["train_seconds"] == summary["train_seconds"] and plain["status"] == "done"
    assert plain["model"] == "mnist-fast" and plain["dataset"] == "mnist" and plain["report"] is None
    assert rows["study/trial-0000"]["status"] == "resumable" and rows["study/trial-0000"]["reason"] == "time budget"
    assert rows["crashed"]["status"] == "crashed" and rows["crashed"]["train_seconds"] > 0  # from metrics.csv
    damaged = rows["damaged"]
    assert damaged["status"] == "damaged" and damaged["reason"].startswith("summary.json: ")
    assert rows["damaged-yaml"]["status"] == "damaged" and "is not valid YAML" in rows["damaged-yaml"]["reason"]
    assert rows["digits"]["dataset"] == "digits"

    status, out, _ = _cli(capsys, folder)
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert status == 0 and sorted(lines) == NAMES
    assert "[" in lines["evaluated"] and "resumable (time budget)" in lines["study/trial-0000"]
    assert "damaged (summary.json: " in lines["damaged"]


def test_csv_has_the_json_fields_and_values(folder, capsys):
    rows = _json(capsys, folder)
    status, out, _ = _cli(capsys, folder, "--format", "csv")
    table = list(csv.DictReader(io.StringIO(out)))
    assert status == 0 and list(table[0]) == list(rows["plain"])
    for row in table:
        same = rows[row["name"]]
        assert row["test_acc"] == ("" if same["test_acc"] is None else str(same["test_acc"]))
        assert row["status"] == same["status"] and row["reason"] == same["reason"]


def test_sort_and_where(folder, capsys):
    by_acc = list(_json(capsys, folder, "--sort", "acc"))
    accs = _json(capsys, folder)
    known = [name for name in by_acc if accs[name]["test_acc"] is not None]
    assert by_acc[:len(known)] == known and len(known) == 3  # runs without an accuracy come last
    assert [accs[n]["test_acc"] for n in known] == sorted((accs[n]["test_acc"] for n in known), reverse=True)
    assert list(_json(capsys, folder, "--sort", "name", "--reverse")) == NAMES[::-1]
    assert list(_json(capsys, folder, "--where", "dataset=digits")) == ["digits"]
    done = _json(capsys, folder, "--where", "status=done", "--where", "acc>0.5", "--where", "model=mnist-fast")
    assert sorted(done) == ["digits", "evaluated", "plain"]
    assert _json(capsys, folder, "--where", "acc>1") == {}


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.rows, self.external = [], 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.hrefs += [attrs["href"]] if tag == "a" else []
        self.rows += tag == "tr"
        self.external += [attrs[key] for key in ("src",) if key in attrs and not attrs[key].startswith("data:")]


def test_html_page_lists_every_run_and_links_reports_relatively(folder, tmp_path, capsys):
    page = tmp_path / "pages" / "runs.html"
    status, out, _ = _cli(capsys, folder, "--html", page)
    assert status == 0 and str(page) in out
    links = _Links()
    links.feed(page.read_text())
    assert links.rows == 1 + len(NAMES) and not links.external and "<script" not in page.read_text()
    assert len(links.hrefs) == 1 and not Path(links.hrefs[0]).is_absolute()  # only the evaluated run has a report
    assert (page.parent / links.hrefs[0]).resolve() == (folder / "evaluated" / "report.html").resolve()


@pytest.mark.parametrize(("args", "message"), [
    (["{missing}"], "does not exist"),
    (["{empty}"], "no run directories in"),
    (["{folder}", "--where", "accuracy>0.9"], "did you mean acc?"),
    (["{folder}", "--sort", "speed"], "use one of name, model, dataset, acc, time, status, date"),
    (["{folder}", "--where", "acc~0.9"], "is not a condition"),
    (["{folder}", "--where", "acc>high"], "acc is a number"),
])
def test_bad_folders_and_options_are_one_line_errors(folder, tmp_path, capsys, args, message):
    (tmp_path / "empty" / "nothing").mkdir(parents=True)
    places = {"folder": folder, "missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    status, out, err = _cli(capsys, *(a.format(**places) for a in args))
    assert status == 1 and not out and err.count("\n") == 1 and message in err
