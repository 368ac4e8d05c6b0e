import pytest
import yaml

from imgclf.cli import main
from imgclf.config import RECIPES, config_keys, load_config
from imgclf.errors import ImgclfError


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
