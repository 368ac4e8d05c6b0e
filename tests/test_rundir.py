import pytest
import torch

from imgclf.data import Preprocess
from imgclf.errors import ImgclfError
from imgclf.models import create_model
from imgclf.rundir import atomic_write, load_model, preprocess_of, save_model

PRE = Preprocess((28, 28), 1, (0.1307,), (0.3081,))


def test_a_crash_mid_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "state.pt"
    target.write_text("previous")

    def crash(tmp):
        tmp.write_text("half a checkpoi")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, crash)
    assert target.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_model_round_trip_and_damage(tmp_path):
    model = create_model("cnn", 3, 1, 28, layers=2).eval()
    save_model(tmp_path, model, ["a", "b", "c"], PRE, metrics={"val_acc": 0.5})
    loaded, meta = load_model(tmp_path)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(loaded(x), model(x)) and meta["classes"] == ["a", "b", "c"]
    assert preprocess_of(meta) == PRE and meta["architecture"]["layers"] == 2
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ImgclfError, match=r"does not match the checksum in model\.json"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ImgclfError, match=r"model\.json is damaged"):
        load_model(tmp_path)
    meta_only = tmp_path / "elsewhere"
    meta_only.mkdir()
    with pytest.raises(ImgclfError, match="is not a run directory with a trained model"):
        load_model(meta_only)


def test_nan_weights_are_never_saved(tmp_path):
    model = create_model("mnist-fast")
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    with pytest.raises(ImgclfError, match="refusing to save weights that contain NaN"):
        save_model(tmp_path, model, [str(i) for i in range(10)], PRE)
    assert not list(tmp_path.iterdir())
