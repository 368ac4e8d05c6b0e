"""Hyperparameter search: spaces, a tiny study end to end, resume, pruning, concurrent workers, errors."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from imgclf.cli import main
from imgclf.commands.tune import text_table
from imgclf.config import load_config
from imgclf.errors import ImgclfError
from imgclf.training import StopReason, train
from imgclf.tune import PAPER_SPACE, load_space, model_space, tune, without_given

BIN = Path(sys.executable).parent


def _config(tmp_path, mnist_dir, **overrides):
    base = {"out": str(tmp_path), "data.dataset": "mnist", "data.data_dir": str(mnist_dir), "data.subset": 600,
            "data.val_fraction": 0.2, "data.augment": "none", "data.num_workers": 0, "model.name": "cnn",
            "model.options": {"layers": 2, "width": 8}, "train.epochs": 1, "train.batch_size": 50}
    return load_config(None, {**base, **overrides})


SPACE = {"train.lr": {"low": 0.001, "high": 0.05, "log": True}, "model.options.width": [8, 12]}


def test_paper_space_is_table_iii(tmp_path):
    space = load_space("paper")
    assert space["train.lr"] == [0.001, 0.01, 0.1] and space["train.batch_size"] == [32, 64, 128]
    assert space["train.epochs"] == [10, 20, 30] and space["model.options.layers"] == [5, 10, 15]
    assert space["model.options.kernel"] == [3, 5, 7] and space == PAPER_SPACE


@pytest.mark.parametrize(("text", "message"), [
    ("train.lr: []", "empty list of choices"),
    ("train.lr: {low: 0.1, high: 0.01}", "a range needs low < high"),
    ("- train.lr", "must map config keys"),
    ("train.lr: [0.1", "not valid YAML"),
])
def test_bad_space_files_are_clear_errors(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ImgclfError, match=message):
        load_space(path)
    with pytest.raises(ImgclfError, match="cannot read search space"):
        load_space(tmp_path / "missing.yaml")


def test_bad_settings_fail_before_any_trial(tmp_path, mnist_dir):
    config = _config(tmp_path, mnist_dir)
    with pytest.raises(ImgclfError, match=r"unknown config key train\.learning_rate"):
        tune(config, {"train.learning_rate": [0.1, 0.2]}, trials=1)
    with pytest.raises(ImgclfError, match="grid sampler needs a list"):
        tune(config, SPACE, sampler="grid")
    with pytest.raises(ImgclfError, match="--sampler must be one of"):
        tune(config, SPACE, sampler="bayes")
    with pytest.raises(ImgclfError, match="selects on the validation split"):
        tune(_config(tmp_path, mnist_dir, **{"data.val_fraction": 0.0}), SPACE)
    with pytest.raises(ImgclfError, match=r"--study '\.\./escape' must be a plain folder name"):
        tune(config, SPACE, study="../escape")
    assert not (tmp_path.parent / "escape").exists()


def test_a_tiny_study_end_to_end_and_its_resume(tmp_path, mnist_dir):
    config = _config(tmp_path, mnist_dir)
    result = tune(config, SPACE, sampler="random", pruner="none", trials=2, study="s")
    folder = tmp_path / "s"
    assert result["trials"] == 2 and result["complete"] == 2 and (folder / "study.db").is_file()
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["complete", "complete"]
    assert {"train.lr", "model.options.width"} <= set(rows[0])
    best = result["best"]
    assert best["value"] == max(float(r["value"]) for r in rows)
    for r in rows:  # every trial is a run directory, trained without touching the test split
        summary = json.loads((Path(r["run"]) / "summary.json").read_text())
        assert "test_acc" not in summary
    test = result["test"]  # once, for the best
    assert test["accuracy_ci"][0] <= test["accuracy"] <= test["accuracy_ci"][1] and 0 < test["macro_f1"] <= 1
    rerun = load_config(folder / "best.yaml")  # the best config re-runs as a recipe
    assert rerun.train.lr == best["params"]["train.lr"] and rerun.model.options["width"] == best["params"][
        "model.options.width"] and rerun.name is None
    assert [row["parameter"] for row in result["table"]] == ["train.lr", "model.options.width"]
    assert {Path(p).name for p in result["plots"]} >= {"optimization_history.png"}

    resumed = tune(config, SPACE, sampler="random", pruner="none", trials=3, study="s")  # one more, not three
    assert resumed["trials"] == 3 and len(list(folder.glob("trial-*"))) == 3


def test_training_stops_when_told_to_prune(tmp_path, mnist_dir):
    seen = []
    run = train(_config(tmp_path, mnist_dir, **{"train.epochs": 3}), progress=False,
                on_epoch=lambda row: seen.append(row["epoch"]) or row["epoch"] >= 2)
    assert seen == [1, 2] and run.summary.stopped is StopReason.PRUNED and run.summary.test_acc is None


def test_median_pruner_stops_a_trial_worse_than_the_median(tmp_path, mnist_dir):
    config = _config(tmp_path, mnist_dir, **{"train.epochs": 2, "train.schedule": "constant"})
    folder = tmp_path / "p"
    folder.mkdir()
    study = optuna.create_study(study_name="p", storage=f"sqlite:///{folder / 'study.db'}", direction="maximize")
    for lr in (0.01, 0.01, 1e-9):  # two that learn, then one that cannot: it is pruned after its first epoch
        study.enqueue_trial({"train.lr": lr})
    result = tune(config, {"train.lr": [0.01, 1e-9]}, sampler="random", pruner="median", trials=3, study="p")
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["complete", "complete", "pruned"]
    assert rows[2]["epochs_reported"] == "1" and result["pruned"] == 1


def test_two_workers_share_one_study_without_losing_or_repeating_trials(tmp_path, mnist_dir):
    command = [str(BIN / "imgclf"), "tune", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--out",
               str(tmp_path), "--study", "shared", "--model", "cnn", "--model.options", "{layers: 2, width: 8}",
               "--data.subset", "400", "--data.val_fraction", "0.25", "--data.augment", "none", "--epochs", "1",
               "--train.batch_size", "50", "--trials", "3", "--sampler", "random", "--pruner", "none", "-q",
               "--space", str(tmp_path / "space.yaml")]
    (tmp_path / "space.yaml").write_text("train.lr: {low: 0.001, high: 0.05, log: true}\n")
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    storage = f"sqlite:///{tmp_path / 'shared' / 'study.db'}"
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    numbers = [t.number for t in trials]
    assert len(trials) >= 3  # a trial in flight when the 3rd finished may add one
    assert len({t.params["train.lr"] for t in trials}) == len(trials)  # unseeded workers propose their own
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    runs = sorted(p.name for p in (tmp_path / "shared").glob("trial-*"))
    assert runs == [f"trial-{n:04d}" for n in sorted(numbers)]  # each trial trained once, in its own folder
    assert all((tmp_path / "shared" / r / "model.safetensors").is_file() for r in runs)


def test_cli_tune_with_the_study_in_postgresql_prints_the_table(tmp_path, mnist_dir, capsys, postgres_url):
    (tmp_path / "space.yaml").write_text("train.lr: [0.01, 0.02]\n")
    assert main(["tune", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--out", str(tmp_path), "--model",
                 "cnn", "--model.options", "{layers: 2, width: 8}", "--data.subset", "400", "--data.augment",
                 "none", "--data.val_fraction", "0.25", "--epochs", "1", "--space", str(tmp_path / "space.yaml"),
                 "--sampler", "grid", "--study", "pg", "--storage", postgres_url, "-q"]) == 0
    out = capsys.readouterr().out
    assert "2 trials (0 pruned, 0 failed)" in out and "train.lr" in out and "0.01, 0.02" in out and "best.yaml" in out
    storage = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    assert len(optuna.load_study(study_name="pg", storage=storage).trials) == 2  # the study lives in PostgreSQL
    assert not (tmp_path / "pg" / "study.db").exists()


def test_a_different_search_in_the_same_study_is_refused(tmp_path, mnist_dir):
    config = _config(tmp_path, mnist_dir, **{"data.subset": 300})
    tune(config, {"train.lr": [0.01]}, sampler="grid", study="same")
    with pytest.raises(ImgclfError, match="started with a different space"):
        tune(config, {"train.lr": [0.01, 0.02]}, sampler="grid", study="same")
    with pytest.raises(ImgclfError, match="different monitor"):
        tune(_config(tmp_path, mnist_dir, **{"data.subset": 300, "train.monitor": "val_loss"}),
             {"train.lr": [0.01]}, sampler="grid", study="same")


def test_when_every_trial_fails_the_error_says_why(tmp_path, mnist_dir, caplog):
    config = _config(tmp_path, mnist_dir, **{"data.subset": 300, "train.batch_size": 1000})  # > the 240 images
    with pytest.raises(ImgclfError, match=r"no trial .* completed.*lower train\.batch_size"):
        tune(config, {"train.lr": [0.01, 0.02]}, sampler="grid", study="fails")
    assert caplog.text.count("failed: batch size 1000 is larger") == 2  # one line per failed trial


def test_space_ranges_are_checked(tmp_path, mnist_dir):
    config = _config(tmp_path, mnist_dir)
    with pytest.raises(ImgclfError, match="a log range needs low > 0"):
        tune(config, {"train.lr": {"low": 0, "high": 0.1, "log": True}})
    with pytest.raises(ImgclfError, match=r"config key train\.optimizer must be one of adam, .*got 3\.5"):
        tune(config, {"train.optimizer": ["adam", 3.5]})


def test_values_set_on_the_command_line_are_not_searched():
    space = {"model.name": "cnn", "train.epochs": [10, 20], "train.lr": [0.01, 0.1], "model.options.layers": [5, 10],
             "model.options.dropout": {"low": 0.0, "high": 0.5}}
    kept, notes = without_given(space, {"train.epochs": 0.5, "model.name": "cnn", "model.options": {"layers": 2}})
    # the same model.name: nothing to say
    assert kept == {"train.lr": [0.01, 0.1], "model.options.dropout": {"low": 0.0, "high": 0.5}}
    assert notes == ["the space's train.epochs is not used: you set train.epochs 0.5",
                     "the space's model.options.layers is not used: you set model.options.layers 2"]
    kept, notes = without_given(space, {"model.name": "resnet18"})  # the space's options are for its own model
    assert kept == {"train.epochs": [10, 20], "train.lr": [0.01, 0.1]} and len(notes) == 3
    with pytest.raises(ImgclfError, match=r"nothing left to search: .*\(train\.lr\)"):
        without_given({"train.lr": [0.01, 0.1]}, {"train.lr": 0.05})


def test_the_auto_space_fits_the_model_and_the_data(tmp_path, mnist_dir):
    space = model_space(_config(tmp_path, mnist_dir, **{"train.lr": 0.01, "train.batch_size": 256}), 100)
    assert space == {"train.lr": {"low": 0.001, "high": 0.03, "log": True},
                     "train.weight_decay": {"low": 1e-5, "high": 1e-2, "log": True},
                     "train.batch_size": [16, 32, 64],  # 256 is more than the 100 training images
                     "model.options.dropout": {"low": 0.0, "high": 0.5}}  # cnn has dropout, mnist-fast not
    fast = model_space(_config(tmp_path, mnist_dir, **{"model.name": "mnist-fast"}))
    assert "train.epochs" not in fast and "model.options.dropout" not in fast
    with pytest.raises(ImgclfError, match=r"named space.*auto: .*paper: "):
        load_space(tmp_path / "missing.yaml")


def _table(out: str) -> list[str]:
    """The summary table's lines, from its header to the line before the test accuracy."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("parameter"))
    return lines[start:next(i for i, line in enumerate(lines) if line.startswith("test accuracy"))]


def _columns_apart(lines: list[str]) -> bool:
    """Every row has two spaces before each column the header starts."""
    starts = [lines[0].index(name) for name in ("values tested", "best")]
    return all(line[s - 2:s] == "  " and line[s] != " " for line in lines[1:] for s in starts)


def test_the_summary_table_keeps_its_columns_apart():
    rows = [["model.options.a_very_long_parameter_name", ", ".join(f"0.00{i}123456" for i in range(9)), "x" * 60],
            ["train.lr", "0.001, 0.01", "0.01"]]
    lines = text_table(["parameter", "values tested", "best"], rows)
    assert _columns_apart(lines) and all(len(cell) <= 48 for cell in lines[1].split("  ") if cell)
    assert lines[1].split()[-1] == "x" * 46 + ".." and lines[2].split() == ["train.lr", "0.001,", "0.01", "0.01"]


@pytest.fixture
def photos(tmp_path, write_image) -> Path:
    """A plain folder of 3 classes of 12 small RGB images (28 for training, 80/10/10)."""
    for k, label in enumerate(("red", "green", "blue")):
        for i in range(12):
            write_image(tmp_path / "photos" / label / f"{i}.png", size=(16, 16), seed=100 * k + i)
    return tmp_path / "photos"


def _tune_cli(photos: Path, *options: str) -> int:
    return main(["tune", "--dataset", f"folder:{photos}", "--model", "cnn", "--model.options", "{layers: 2, width: 8}",
                 "--data.num_workers", "0", "--pruner", "none", "--out", str(photos.parent), "-q", *options])


def test_cli_tune_keeps_the_epochs_and_options_given(photos, capsys):
    (photos.parent / "space.yaml").write_text("train.epochs: [4, 5]\ntrain.lr: [0.01, 0.02]\n"
                                              "model.options.layers: [3, 4]\n")
    assert _tune_cli(photos, "--train.batch_size", "8", "--epochs", "0.3", "--space", str(photos.parent / "space.yaml"),
                     "--sampler", "grid", "--study", "kept") == 0
    out = capsys.readouterr().out
    assert "note: the space's train.epochs is not used: you set train.epochs 0.3" in out
    assert "note: the space's model.options.layers is not used: you set model.options.layers 2" in out
    runs = sorted((photos.parent / "kept").glob("trial-*"))
    configs = [load_config(run / "config.yaml") for run in runs]
    assert len(runs) == 2 and {c.train.lr for c in configs} == {0.01, 0.02}
    assert all(c.train.epochs == 0.3 and c.model.options == {"layers": 2, "width": 8} for c in configs)
    assert _columns_apart(_table(out))


def test_cli_tune_without_a_space_searches_around_the_model_on_the_users_data(photos, capsys):
    assert _tune_cli(photos, "--epochs", "0.5", "--trials", "2", "--sampler", "random", "--seed", "0") == 0
    out = capsys.readouterr().out
    assert "(auto space, cnn)" in out
    rows = list(csv.DictReader((photos.parent / "tune-cnn" / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["complete", "complete"]
    assert {"train.lr", "train.weight_decay", "train.batch_size", "model.options.dropout"} <= set(rows[0])
    assert "train.epochs" not in rows[0] and all(int(r["train.batch_size"]) <= 16 for r in rows)  # 28 train images
    assert all(load_config(Path(r["run"]) / "config.yaml").train.epochs == 0.5 for r in rows)
    assert _columns_apart(_table(out))
