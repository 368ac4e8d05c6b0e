"""Transfer learning without internet: a backbone pretrained here on real CIFAR-10 photos, saved as a
torchvision state dict, fine-tunes on the real hymenoptera photos through --model.weights."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from imgclf.cli import main
from imgclf.config import load_config
from imgclf.training import StopReason, train

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"  # as in tests/conftest.py


def _cifar_slice(root: Path, per_class: int) -> Path:
    """A small <class>/ folder linking the first `per_class` images of each CIFAR-10 class."""
    source = SHARED / "cifar10-train-25k"
    assert source.is_dir(), f"the CIFAR-10 images are expected in {source} (see ../shared/datasets/README.md)"
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        (root / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            (root / class_dir.name / image.name).symlink_to(image)
    return root


def _as_torchvision_file(run: Path, path: Path) -> dict[str, torch.Tensor]:
    """The run's weights under torchvision's resnet18 names (its head as fc), saved as a user's .pth file."""
    state = load_file(run / "model.safetensors")
    tv = {k.removeprefix("body."): v for k, v in state.items() if k.startswith("body.")}
    tv.update({f"fc.{k.removeprefix('head.')}": v for k, v in state.items() if k.startswith("head.")})
    torch.save(tv, path)
    return tv


def _body(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("body."): v for k, v in state.items() if k.startswith("body.")}


def test_a_pretrained_file_fine_tunes_on_real_photos_head_first(tmp_path):
    from torchvision import models

    cifar = _cifar_slice(tmp_path / "cifar", per_class=8)  # 80 images: the weights only need to be trained
    pretrain = load_config(None, {"out": str(tmp_path / "runs"), "name": "pretrain", "data.dataset": f"folder:{cifar}",
                                  "data.num_workers": 0, "data.image_size": 32, "model.name": "resnet18",
                                  "train.epochs": 1, "train.batch_size": 16, "train.lr": 0.003})
    file = tmp_path / "cifar-resnet18.pth"
    saved = _as_torchvision_file(train(pretrain, progress=False).path, file)
    models.resnet18(num_classes=10).load_state_dict(torch.load(file, weights_only=True))  # really torchvision's

    after_frozen = {}

    def keep_first_epoch(row: dict) -> bool:  # state.pt holds the live weights and optimizer after every epoch
        if row["epoch"] == 1:
            after_frozen.update(torch.load(run_dir / "state.pt", weights_only=True))
        return False

    run_dir = tmp_path / "runs" / "ants-bees"
    fine_tune = load_config(None, {"out": str(run_dir.parent), "name": run_dir.name, "data.num_workers": 0,
                                   "data.dataset": f"folder:{SHARED / 'hymenoptera'}", "data.image_size": 32,
                                   "model.name": "resnet18", "model.weights": str(file), "train.epochs": 1.5,
                                   "train.freeze_epochs": 1, "train.batch_size": 32, "train.lr": 0.003})
    run = train(fine_tune, progress=False, on_epoch=keep_first_epoch)

    body = _body(after_frozen["model"])
    assert body.keys() == saved.keys() - {"fc.weight", "fc.bias"}  # the file's 10-class fc is not loaded
    assert all(torch.equal(v, saved[k]) for k, v in body.items())  # frozen: not one value (nor BN statistic) moved
    assert after_frozen["model"]["head.weight"].shape == (2, 512) and run.summary.stopped is StopReason.DONE
    assert len(after_frozen["optimizer"]["state"]) == 2  # AdamW stepped only the head's weight and bias
    final = _body(torch.load(run.path / "state.pt", weights_only=True)["model"])  # the last weights
    assert not torch.equal(final["layer4.1.conv2.weight"], saved["layer4.1.conv2.weight"])  # then unfrozen
    assert {"config.yaml", "model.json", "metrics.csv", "state.pt"} <= {p.name for p in run.path.iterdir()}
    assert run.summary.test_acc is None  # hymenoptera has train/ and val/ only

    assert main(["evaluate", str(run.path), "--split", "val", "-q", "--latency-runs", "2"]) == 0
    report = json.loads((run.path / "report.json").read_text())
    assert report["split"] == "val" and report["samples"] == 153


def test_weights_that_do_not_fit_stop_the_run_before_it_starts(tmp_path, capsys):
    from torchvision import models

    file = tmp_path / "mobilenet.pth"
    torch.save(models.mobilenet_v3_small().state_dict(), file)
    status = main(["train", "--dataset", f"folder:{SHARED / 'hymenoptera'}", "--model", "resnet18",
                   "--model.weights", str(file), "--data.image_size", "32", "--train.batch_size", "32",
                   "--out", str(tmp_path / "runs"), "-q"])
    assert status == 1 and not (tmp_path / "runs").exists()
    assert "missing: bn1.bias" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "warned"), [("resnet18", True), ("mnist-fast", False)])
def test_train_warns_once_when_a_backbones_last_stages_see_1x1_maps(tmp_path, image_folder, caplog, name, warned):
    config = load_config(None, {"out": str(tmp_path / "runs"), "name": "r", "data.dataset": f"folder:{image_folder}",
                                "data.num_workers": 0, "data.image_size": 32 if warned else 28, "model.name": name,
                                "train.epochs": 0.5, "train.batch_size": 8})
    train(config, progress=False)
    flat = [r.message for r in caplog.records if r.levelname == "WARNING" and "1x1 feature maps" in r.message]
    assert len(flat) == warned  # once per run
    if warned:
        assert flat[0].startswith("resnet18 at 32x32 px") and "(from body.layer4.0.conv1 on)" in flat[0]
