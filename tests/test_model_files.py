"""Model files that were changed, forged or are not what their name says: one clear error each, from every loader
(predict, serve, export), never a traceback; and run names that would write outside --out."""

from __future__ import annotations

import json
import logging
import os
import pickle

import pytest
import torch
from PIL import Image

from imgclf.cli import main
from imgclf.config import Config
from imgclf.errors import ImgclfError
from imgclf.rundir import MAX_SIDE, SEAL, load_model, read_meta, sha256, update_meta, write_meta
from imgclf.serve.app import create_app
from serve.serving_helpers import tiny_run


@pytest.fixture
def run(tmp_path):
    return tiny_run(tmp_path / "run", ["cat", "dog", "fox"], 1, 16)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "x.png"
    Image.new("L", (16, 16), 200).save(path)
    return path


def _fails(argv: list[str], capsys, message: str) -> None:
    """The command exits 1 with one line on stderr that contains `message`, and no traceback."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def _meta(run) -> dict:
    return json.loads((run / "model.json").read_text())


def test_a_changed_model_json_is_refused_by_predict_serve_and_update(run, image, capsys):
    assert main(["predict", str(run), str(image)]) == 0
    meta = _meta(run)
    meta["classes"].reverse()  # the same weights would name other classes
    (run / "model.json").write_text(json.dumps(meta))
    _fails(["predict", str(run), str(image)], capsys, f"{run / 'model.json'} was changed after imgclf wrote it")
    with pytest.raises(ImgclfError, match="was changed after imgclf wrote it"):
        create_app(run)
    with pytest.raises(ImgclfError, match="was changed after imgclf wrote it"):
        update_meta(run, temperature=2.0)  # never seals what it cannot vouch for


def test_writers_seal_again_and_unsealed_runs_load_with_one_warning(run, caplog):
    update_meta(run, temperature=2.0)  # what evaluate --calibrate does
    assert load_model(run)[1]["temperature"] == 2.0
    meta = _meta(run)
    del meta[SEAL]
    (run / "model.json").write_text(json.dumps(meta))  # as imgclf wrote it before the seal
    with caplog.at_level(logging.WARNING, logger="imgclf.rundir"):
        assert load_model(run)[1]["classes"] == ["cat", "dog", "fox"]
        load_model(run)
    warned = [r.getMessage() for r in caplog.records if r.name == "imgclf.rundir"]
    assert len(warned) == 1 and f"model.json has no {SEAL}" in warned[0]
    assert SEAL in update_meta(run, temperature=1.5) and load_model(run)[1]["temperature"] == 1.5


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m.pop("preprocess"), "it lacks preprocess"),
    (lambda m: m.update(classes="cat,dog,fox"), "classes must be a list of 1 to 100,000 different names"),
    (lambda m: m.update(classes=[1, 2, 3]), "classes must be a list"),
    (lambda m: m.update(classes=[str(i) for i in range(10**6)]), "classes must be a list of 1 to 100,000"),
    (lambda m: m["preprocess"].update(size=[10**9, 10**9]), f"preprocess.size must be two whole numbers from 1 to "
                                                            f"{MAX_SIDE}"),
    (lambda m: m["preprocess"].update(size=[16, "16"]), "preprocess.size must be two whole numbers"),
    (lambda m: m["preprocess"].update(channels=2), "preprocess.channels must be 1 or 3"),
    (lambda m: m["preprocess"].update(mean=[0.5, 0.5]), "preprocess.mean and preprocess.std must be lists of one"),
    (lambda m: m["preprocess"].update(std=[0]), "preprocess.mean and preprocess.std must be lists of one"),
    (lambda m: m.update(temperature="hot"), "temperature must be a positive number"),
    (lambda m: m["architecture"].update(pretrained=True), "architecture must name the model"),
    (lambda m: m["architecture"].update(image_size=10**9), "architecture must name the model"),
])
def test_model_json_of_the_wrong_shape_is_one_clear_error(run, image, capsys, change, message):
    meta = _meta(run)
    change(meta)
    write_meta(run / "model.json", meta)  # sealed: what is checked here is the content
    _fails(["predict", str(run), str(image)], capsys, f"{run / 'model.json'} is damaged: {message}")


def test_weights_that_are_not_safetensors_but_match_the_checksum(run, image, capsys):
    (run / "model.safetensors").write_bytes(b"\x00" * 64)
    update_meta(run, sha256=sha256(run / "model.safetensors"))
    _fails(["predict", str(run), str(image)], capsys, "model.safetensors is not a safetensors file")
    (run / "model.json").write_bytes(b"\xff\xfe{}")
    _fails(["export", str(run)], capsys, "model.json is damaged")


class _Payload:
    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_file_named_torchscript_that_is_not_is_refused_unread(run, image, tmp_path, capsys, kind):
    path = tmp_path / "model.torchscript.pt"
    payload = _Payload()
    payload.marker = tmp_path / "ran"
    if kind == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save({"payload": payload}, path)
    meta = {k: v for k, v in _meta(run).items() if k != "architecture"}
    write_meta(path.with_name(path.name + ".json"), {**meta, "sha256": sha256(path)})
    _fails(["predict", str(path), str(image)], capsys, f"{path} is not a TorchScript model")
    assert not payload.marker.exists()
    write_meta(path.with_name(path.name + ".json"), {**meta, "sha256": sha256(path), "classes": []})
    with pytest.raises(ImgclfError, match=r"model\.torchscript\.pt\.json is damaged: classes must be"):
        read_meta(path.with_name(path.name + ".json"), "export it again", exported=True)


def test_a_config_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_bytes("train:\n  lr: 0.01  # \u00e9\n".encode("latin-1"))
    _fails(["train", "--config", str(path)], capsys, f"config {path} is not UTF-8 text")


@pytest.mark.parametrize(("command", "name"), [("train", "../escape"), ("cv", "../escape"), ("train", ".."),
                                             ("train", "ABSOLUTE"), ("train", "a\\b")])
def test_names_that_leave_out_are_refused(tmp_path, capsys, command, name):
    out, name = tmp_path / "runs", name.replace("ABSOLUTE", str(tmp_path / "escape"))
    _fails([command, "--name", name, "--out", str(out), "--dataset", "digits"], capsys,
           "config key name must be a plain folder name")
    assert not out.exists() and not (tmp_path / "escape").exists()


def test_retrain_refuses_a_name_outside_out(run, tmp_path, capsys):
    Config().save(run / "config.yaml")
    _fails(["retrain", str(run), "--feedback", str(tmp_path / "f.db"), "--name", "../escape"], capsys,
           "--name '../escape' must be a plain folder name")
    assert not (tmp_path.parent / "escape").exists() and not (tmp_path / "f.db").exists()
