import shutil
import typing

import pytest
import yaml

from imgclf import openset
from imgclf.attacks import ATTACKS
from imgclf.cli import main
from imgclf.commands.common import yaml_value
from imgclf.config import (
    RECIPES,
    Attack,
    Augmentation,
    Config,
    TrainConfig,
    check_config,
    config_keys,
    load_config,
    with_overrides,
)
from imgclf.data import AUGMENT_PRESETS
from imgclf.errors import ImgclfError

TYPO = ["--train.precision", "bf61"]
TYPO_ERROR = "error: config key train.precision must be one of fp32, bf16, fp16, got 'bf61'; did you mean bf16?"


def _usage_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_unknown_flags_and_keys_get_did_you_mean(capsys, tmp_path):
    assert "unrecognized argument --epocs; did you mean --epochs?" in _usage_error(["train", "--epocs", "1"], capsys)
    assert "did you mean --resamples?" in _usage_error(["evaluate", "runs/x", "--resampels", "9"], capsys)
    assert "did you mean --train.batch_size?" in _usage_error(["lr-find", "--batch-size", "8"], capsys)
    assert main(["train", "--train.learning_rate", "0.1"]) == 1
    assert "unknown config key train.learning_rate; did you mean train.lr?" in capsys.readouterr().err
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ImgclfError, match=r"train.learning_rate; did you mean train.lr\?"):
        load_config(recipe)


def test_split_fractions_over_one_are_an_error(capsys, image_folder):
    err = _usage_error(["data", "info", f"folder:{image_folder}", "--split", "0.8,0.3,0.1"], capsys)
    assert "the fractions 0.8,0.3,0.1 add up to 1.2, more than 1" in err


def test_a_missing_run_is_named_as_typed(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert main(["evaluate", "runs/nope"]) == 1
    assert capsys.readouterr().err.startswith("error: runs/nope does not exist")


def test_packaged_recipes_are_found_by_name_from_anywhere(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert load_config("folder") == load_config(RECIPES / "folder.yaml") == load_config("folder.yaml")
    assert load_config("mnist-fast").model.name == "mnist-fast"
    with pytest.raises(ImgclfError, match="config foldr is neither a file nor a packaged recipe; did you mean folder"):
        load_config("foldr")
    (tmp_path / "folder").write_text("train:\n  epochs: 7\n")  # a file that exists wins over the recipe
    assert load_config("folder").train.epochs == 7


def test_config_show_lists_every_key_with_value_default_and_meaning(capsys, tmp_path):
    assert main(["config", "show", "folder"]) == 0
    out = capsys.readouterr().out
    meanings = [line.split("  # ", 1)[1] for line in out.splitlines() if "  # " in line]
    assert len(meanings) == len(config_keys()) and all(meanings)  # every key, each with its meaning
    assert "  lr: 0.001  # learning rate (the peak of the schedule) [default 0.02]" in out
    assert "  seed: 0  # weights, data order and augmentation\n" in out
    (tmp_path / "shown.yaml").write_text(out)  # the listing is itself a recipe
    assert load_config(tmp_path / "shown.yaml") == load_config("folder")
    assert yaml.safe_load(out)["data"]["dataset"] == "folder:photos"


@pytest.mark.parametrize("overrides, message", [
    ({"train.schedule": "cosin"}, "config key train.schedule must be one of constant, step, plateau, cosine, onecycle, "
                                  "got 'cosin'; did you mean cosine?"),
    ({"data.augment": "nope"}, "data.augment must be one of auto, none, digits, photos, light, got 'nope'; did you "
                               "mean none?"),
    ({"train.optimizer": "Adam"}, "did you mean adam?"),
    ({"model.freeze": "backbon"}, "model.freeze must be backbone, none or a number of stages, got 'backbon'; did "
                                  "you mean backbone?"),
    ({"train.device": "cdua"}, "did you mean cuda?"),
    ({"data.val_fraction": 1}, "config key data.val_fraction must be in [0, 1), got 1."),
    ({"train.batch_size": 0}, "config key train.batch_size must be at least 1, got 0."),
    ({"train.lr": float("inf")}, "train.lr must be 0 or more"),
    ({"data.channels": 2}, "data.channels must be one of 1, 3, got 2."),
    ({"data.val_fraction": 0.5, "data.test_fraction": 0.5}, "data.val_fraction and data.test_fraction must leave "
                                                            "training images"),
    ({"data.folds": 3, "data.fold": 3}, "data.fold must be in 0..folds-1 (0 to 2), got 3."),
    ({"track": ["wandb"]}, "config key track must be one of tensorboard, mlflow, got 'wandb'."),
    ({"track": "tensorboard"}, "config key track must be a list such as [tensorboard], got 'tensorboard'."),
])
def test_allowed_values_and_ranges_are_checked_where_a_config_is_built(overrides, message):
    for build in (lambda: load_config(None, overrides), lambda: with_overrides(Config(), overrides)):
        with pytest.raises(ImgclfError) as err:
            build()
        assert message in str(err.value)
    config = load_config(None, {"model.freeze": 2, "train.device": "cuda:1", "train.lr": 0, "data.folds": 3})
    assert (config.model.freeze, config.train.device, config.train.lr, config.data.fold) == ("2", "cuda:1", 0.0, 0)
    with pytest.raises(ImgclfError, match=r"train\.gamma must be between 0 and 1"):
        check_config(Config(train=TrainConfig(gamma=2.0)))  # a config built in code


def test_the_allowed_names_are_those_the_library_knows():
    assert set(typing.get_args(Augmentation)) == {"auto", *AUGMENT_PRESETS}
    assert typing.get_args(typing.get_type_hints(TrainConfig)["open_set"]) == (*openset.METHODS, "off")
    # YAML reads `off` as false: it still means off, from a file or the command line
    assert load_config(None, {"train.open_set": yaml_value("off")}).train.open_set == "off"
    with pytest.raises(ImgclfError, match=r"train\.open_set must be one of combined, knn, .*, off"):
        load_config(None, {"train.open_set": "vim"})
    assert set(typing.get_args(Attack)) == {"none", *ATTACKS}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty current folder: a command that fails at once leaves it empty."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.mark.parametrize("command, error", [
    (["train", *TYPO], TYPO_ERROR), (["cv", "--folds", "2", *TYPO], TYPO_ERROR),
    (["tune", "--space", "paper", *TYPO], TYPO_ERROR), (["lr-find", *TYPO], TYPO_ERROR),
    (["train", "--model", "resnet-18"], "error: unknown model 'resnet-18'. Did you mean resnet18")])
def test_a_config_typo_fails_every_command_before_data_is_read(command, error, workdir, capsys):
    missing = f"folder:{workdir.parent / 'missing'}"  # reading the data would fail with another message
    assert main([*command, "--dataset", missing]) == 1
    assert capsys.readouterr().err.startswith(error)
    assert not any(workdir.iterdir())


def test_tune_checks_its_space_before_data_is_read_or_a_trial_runs(workdir, tmp_path, capsys):
    from imgclf.tune import tune

    space = tmp_path / "space.yaml"
    space.write_text("train.schedule: [cosine, cosin]\ntrain.lr: [0.01, 0.1]\n")
    assert main(["tune", "--dataset", f"folder:{tmp_path / 'missing'}", "--space", str(space)]) == 1
    assert "train.schedule must be one of constant, step, plateau, cosine, onecycle, got 'cosin'" in \
           capsys.readouterr().err
    with pytest.raises(ImgclfError, match=r"train\.time must be a positive duration"):
        tune(load_config(None, {"out": str(workdir)}), {"train.time": ["0s", "5m"]})
    assert not any(workdir.iterdir())


def test_study_paper_checks_its_recipes_before_training(workdir, tmp_path, capsys):
    recipes = shutil.copytree(RECIPES, tmp_path / "recipes")
    paper = yaml.safe_load((recipes / "paper-cnn.yaml").read_text())
    (recipes / "paper-cnn.yaml").write_text(yaml.safe_dump({**paper, "train": {**paper["train"], "precision": "bf61"}}))
    assert main(["study", "paper", "--recipes", str(recipes), "--dataset", f"folder:{tmp_path / 'missing'}"]) == 1
    assert capsys.readouterr().err.startswith(TYPO_ERROR)
    assert main(["study", "paper", "--device", "gpu"]) == 1
    assert "config key train.device must be auto, cpu, cuda (or cuda:N) or mps, got 'gpu'" in capsys.readouterr().err
    assert not any(workdir.iterdir())


def test_retrain_checks_the_config_before_exporting_feedback(workdir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    config = load_config(None, {"data.dataset": f"folder:{tmp_path / 'missing'}"}).to_dict()
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    retrain = ["retrain", str(run), "--feedback", str(tmp_path / "feedback.db"), "--out", str(workdir)]
    assert main([*retrain, "--epochs", "0"]) == 1
    assert capsys.readouterr().err.startswith("error: config key train.epochs must be a positive number, got 0.0.")
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "train": {**config["train"], "precision": "bf61"}}))
    assert main(retrain) == 1
    assert capsys.readouterr().err.startswith(TYPO_ERROR)
    assert not any(workdir.iterdir())
