"""--model.weights with the files users have: torchvision state dicts in their usual wrappings, safetensors,
an imgclf run's own weights; anything else is refused naming the keys that do not fit."""

import pytest
import torch
from safetensors.torch import save_file

from imgclf.data import Preprocess
from imgclf.errors import ImgclfError
from imgclf.models import create_model
from imgclf.rundir import save_model

CLASSES = 5  # not ImageNet's 1000: the file's head must be replaced, not loaded


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    """torchvision's resnet18 state dict, as torch.save(resnet18().state_dict(), 'r18.pth') writes it."""
    from torchvision import models

    torch.manual_seed(0)
    return models.resnet18().state_dict()


def _assert_backbone_is(model, state: dict[str, torch.Tensor]) -> None:
    """Every body tensor is the file's; the head is new, for CLASSES classes."""
    body = model.body.state_dict()
    assert body.keys() == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(body[k], state[k]) for k in body)
    assert model.head.out_features == CLASSES


WRAPPINGS = {
    "pth": lambda s: s,
    "checkpoint": lambda s: {"state_dict": s, "epoch": 7},  # as Lightning and many training scripts save
    "model key": lambda s: {"model": s, "epoch": 7},
    "DataParallel": lambda s: {f"module.{k}": v for k, v in s.items()},
}


@pytest.mark.parametrize("wrapping", WRAPPINGS)
def test_torchvision_files_load_into_the_backbone(tmp_path, resnet18_state, wrapping):
    path = tmp_path / "r18.pth"
    torch.save(WRAPPINGS[wrapping](resnet18_state), path)
    _assert_backbone_is(create_model("resnet18", CLASSES, 3, 32, weights=path), resnet18_state)


def test_safetensors_file_loads_into_the_backbone(tmp_path, resnet18_state):
    path = tmp_path / "r18.safetensors"
    save_file(resnet18_state, path)
    _assert_backbone_is(create_model("resnet18", CLASSES, 3, 32, weights=path), resnet18_state)


def test_an_imgclf_runs_weights_start_the_backbone(tmp_path):
    """A run's model.safetensors ('body.'/'head.' keys, 2 classes) gives its body; the head is new."""
    torch.manual_seed(1)
    run = create_model("resnet18", 2, 3, 32)
    save_model(tmp_path, run, ["ants", "bees"], Preprocess((32, 32), 3, (0.5,) * 3, (0.25,) * 3))
    model = create_model("resnet18", CLASSES, 3, 32, weights=tmp_path / "model.safetensors")
    _assert_backbone_is(model, run.body.state_dict())


def test_another_architecture_is_refused_naming_its_keys(tmp_path):
    from torchvision import models

    path = tmp_path / "mobilenet.pth"
    torch.save(models.mobilenet_v3_small().state_dict(), path)
    with pytest.raises(ImgclfError) as caught:
        create_model("resnet18", CLASSES, 3, 32, weights=path)
    message = str(caught.value)
    assert "missing: bn1.bias" in message and "unexpected: classifier.0.bias" in message
    assert "in all)" in message  # long lists are cut, with their length
    assert "state dict of torchvision's resnet18" in message and "model.init" in message


def test_a_gray_run_is_refused_naming_the_first_conv(tmp_path):
    """A from-scratch gray run's first conv (1 channel, with a bias) does not fit RGB resnet18."""
    run = create_model("resnet18", 2, 1, 32)
    save_file({k: v.contiguous() for k, v in run.state_dict().items()}, tmp_path / "gray.safetensors")
    with pytest.raises(ImgclfError, match=r"unexpected: conv1\.bias; wrong shape: conv1\.weight \(64, 1, 7, 7\) "
                                          r"!= \(64, 3, 7, 7\)"):
        create_model("resnet18", CLASSES, 3, 32, weights=tmp_path / "gray.safetensors")


def test_imgclfs_own_models_start_their_body_from_a_run(tmp_path):
    torch.manual_seed(0)
    pretrained = create_model("photo-fast", 10, 3, 32, widths=(8, 16))  # trained on 32px photos of 10 classes
    pre = Preprocess((32, 32), 3, (0.5,) * 3, (0.25,) * 3)
    save_model(tmp_path, pretrained, [str(i) for i in range(10)], pre, dataset="cifar", metrics={})
    model = create_model("photo-fast", 2, 3, 64, weights=tmp_path / "model.safetensors", widths=(8, 16))
    mine, theirs = model.body.state_dict(), pretrained.body.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert model.head.out_features == 2  # a new head for the new classes, at a new input size
    with pytest.raises(ImgclfError, match=r"wrong shape: stage1\.down\.0\.weight .*same options"):
        create_model("photo-fast", 2, 3, 64, weights=tmp_path / "model.safetensors", widths=(16, 16))
