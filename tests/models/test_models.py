import pytest
import torch
from safetensors.torch import save_file

from imgclf.data import Preprocess
from imgclf.errors import ImgclfError
from imgclf.models import create_model, list_models, model_entry, register_model, summarize
from imgclf.models.zoo import BACKBONES

SMALL = 5  # classes in the tests


def _small(name: str, **kwargs):
    """The model at a small input (the least its architecture allows, at least 32), plus a batch."""
    entry = model_entry(name)
    size = max(32, entry.min_size)
    channels = 3 if entry.pretrained else 1
    model = create_model(name, SMALL, channels, size, **kwargs)
    return model, torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list_models())
def test_every_model_keeps_the_contract(name):
    torch.manual_seed(0)
    model, x = _small(name)
    hooked = []
    model.get_submodule(model.target_layer).register_forward_hook(lambda m, i, o: hooked.append(o))
    logits = model(x)
    assert logits.shape == (2, SMALL) and bool(torch.isfinite(logits).all())
    assert model.num_classes == SMALL and hooked, "the Grad-CAM target layer must run in forward"
    with torch.no_grad():
        model.eval()
        assert torch.allclose(model.forward_head(model.forward_features(x)), model(x))
        model.train()
    logits.logsumexp(1).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []

    model.reset_classifier(3)
    assert model(x).shape == (2, 3)

    model.freeze("backbone")
    trainable, total = model.parameter_counts()
    assert trainable == sum(p.numel() for p in model.head.parameters()) < total
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.zero_grad()
    model(x).square().sum().backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("head") for k in changed)  # BN statistics stay frozen too


@pytest.mark.parametrize("stages", [1, 2])
def test_freezing_stages_from_the_input(stages):
    model = create_model("resnet18", SMALL, 3, 32, freeze=stages)
    blocks = model.stages()
    assert all(not p.requires_grad for block in blocks[:stages] for p in block)
    assert all(p.requires_grad for block in blocks[stages:] for p in block)
    with pytest.raises(ImgclfError, match="freeze must be 'backbone', 'none' or a number"):
        model.freeze("everything")


def test_paper_cnn_reproduces_table_ii():
    """Table II at 224x224x3: conv 896, conv 18,496, dense 128, dense 1,290.

    The paper prints 25,689,600 for Dense(128); (56*56*64 + 1) * 128 = 25,690,240 is what its layers
    hold: no integer number of inputs gives the printed figure, so the paper's number is a typo."""
    summary = summarize(create_model("paper-cnn", 10, 3, 224), (3, 224, 224))
    params = {name: p for name, _, _, p in summary.rows if p}
    assert params == {"body.conv1": 896, "body.conv2": 18_496, "body.dense1": 25_690_240, "head": 1_290}
    assert summary.total == summary.trainable == 25_710_922
    shapes = {name: shape for name, _, shape, _ in summary.rows}
    assert shapes["body.pool2"] == (64, 56, 56) and shapes["head"] == (10,)
    macs = 224 * 224 * 32 * 27 + 112 * 112 * 64 * 32 * 9 + 56 * 56 * 64 * 128 + 128 * 10
    assert summary.macs == macs
    assert "Total params: 25,710,922" in summary.table()
    assert summarize(create_model("paper-cnn", 10, 1, 28), (1, 28, 28)).total == 421_642  # the MNIST size


@pytest.mark.parametrize(("layers", "kernel"), [(5, 3), (10, 5), (15, 7)])
def test_configurable_cnn_follows_table_iii_knobs(layers, kernel):
    model = create_model("cnn", 10, 1, 28, layers=layers, kernel=kernel, pools=3)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == layers and {c.kernel_size for c in convs} == {(kernel, kernel)}
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 3
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_cnn_switches():
    plain = create_model("cnn", 10, 1, 28, residual=False, batch_norm=False, dropout=0.0)
    assert not any(isinstance(m, torch.nn.BatchNorm2d | torch.nn.Dropout) for m in plain.modules())
    assert not any(getattr(m, "residual", False) for m in plain.modules())
    rich = create_model("cnn", 10, 1, 28)
    assert sum(getattr(m, "residual", False) for m in rich.modules()) == 3  # units after the first of a stage
    with pytest.raises(ImgclfError, match="odd kernel"):
        create_model("cnn", 10, 1, 28, kernel=4)
    with pytest.raises(ImgclfError, match="poolings would shrink a 28px input"):
        create_model("cnn", 10, 1, 28, pools=6)


def test_registry_errors():
    with pytest.raises(ImgclfError, match=r"unknown model 'resnet-18'. Did you mean resnet18"):
        create_model("resnet-18")
    with pytest.raises(ImgclfError, match="already registered"):
        register_model("cnn", default_size=28)(lambda **kw: None)
    with pytest.raises(ImgclfError, match=r"cnn has no option depth; its options are: layers, width"):
        create_model("cnn", depth=3)
    with pytest.raises(ImgclfError, match="alexnet needs inputs of at least 63x63"):
        create_model("alexnet", image_size=32)
    with pytest.raises(ImgclfError, match="paper-cnn has no pretrained weights"):
        create_model("paper-cnn", pretrained=True)
    with pytest.raises(ImgclfError, match="vit_b_16 needs an image size divisible by 16"):
        create_model("vit_b_16", image_size=40)
    with pytest.raises(ImgclfError, match=r"cannot build cnn with options \{'dropout': 2\}"):
        create_model("cnn", dropout=2)
    with pytest.raises(ImgclfError, match="pretrained resnet18 takes 1 \\(gray\\) or 3"):
        create_model("resnet18", in_channels=4, weights="unused.pth")
    assert list_models("resnet*") == ["resnet18", "resnet34", "resnet50"]
    assert set(BACKBONES) <= set(list_models())


def test_backbone_sizes_match_torchvision_metadata():
    from torchvision import models

    for arch, (_, size, smallest) in BACKBONES.items():
        meta = models.get_model_weights(arch).DEFAULT
        assert size == meta.transforms().crop_size[0]
        assert smallest == (16 if arch == "vit_b_16" else max(8, meta.meta["min_size"][0]))


def _torchvision_state(arch: str, tmp_path, suffix: str):
    """A torchvision-format weight file (random weights, 1000-class head), as the official files are."""
    from torchvision import models

    state = models.get_model(arch, weights=None).state_dict()
    path = tmp_path / f"{arch}{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    return state, path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_load(tmp_path, suffix):
    state, path = _torchvision_state("resnet18", tmp_path, suffix)
    model = create_model("resnet18", SMALL, 3, 32, weights=path)
    assert torch.equal(model.body.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert model.head.out_features == SMALL  # the ImageNet head is replaced
    assert model.input_spec.mean == pytest.approx((0.485, 0.456, 0.406))  # pretrained: ImageNet statistics


def test_gray_input_folds_pretrained_filters_and_normalization(tmp_path):
    """Gray model on the gray image == RGB model on that image repeated to RGB, each with its own
    preprocessing: compared at the first conv's output, away from the zero-padded border."""
    _, path = _torchvision_state("resnet18", tmp_path, ".safetensors")
    rgb = create_model("resnet18", SMALL, 3, 32, weights=path).eval()
    gray = create_model("resnet18", SMALL, 1, 32, weights=path).eval()
    assert gray.input_spec.channels == 1 and gray.input_spec.mean == pytest.approx((0.449,), abs=1e-3)
    image = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    x_gray = gray.input_spec.preprocess()(image)
    x_rgb = rgb.input_spec.preprocess()(image.expand(-1, 3, -1, -1))
    with torch.no_grad():
        a, b = gray.body.conv1(x_gray), rgb.body.conv1(x_rgb)  # 7x7 stride 2, padding 3: border is 2 outputs
    assert torch.allclose(a[..., 2:-2, 2:-2], b[..., 2:-2, 2:-2], atol=1e-4)
    assert not torch.allclose(a, b, atol=1e-4)  # the border differs: the comparison can tell


def test_vit_stages_reach_its_encoder_blocks():
    model = create_model("vit_b_16", SMALL, 3, 32)
    sizes = [sum(p.numel() for p in block) for block in model.stages()]
    assert len(sizes) == 16  # class token, patch embedding, position embedding, 12 blocks, final norm
    assert len({s for s in sizes[3:15]}) == 1  # the 12 encoder blocks are alike


def test_wrong_keys_are_listed(tmp_path):
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7), "extra.weight": torch.zeros(1)}, tmp_path / "w.safetensors")
    with pytest.raises(ImgclfError, match=r"do not fit this model \(missing: bn1.bias.*; unexpected: extra.weight"):
        create_model("resnet18", weights=tmp_path / "w.safetensors")
    with pytest.raises(ImgclfError, match=r"weights file .*nothing.pth does not exist"):
        create_model("resnet18", weights=tmp_path / "nothing.pth")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # would create a file when unpickled


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Exploit(marker)}, path)
    with pytest.raises(ImgclfError, match=r"refusing to load .*evil.pth: it is not a plain tensor file"):
        create_model("resnet18", weights=path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file really is an exploit: a plain unpickle runs it
    assert marker.exists()


def test_pretrained_uses_torchvisions_weights_api(tmp_path, monkeypatch):
    """pretrained=True goes through torchvision's cache; a file put there is used without a download."""
    from torchvision import models

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    meta = models.get_model_weights("mobilenet_v3_small").DEFAULT
    state = models.get_model("mobilenet_v3_small", weights=None).state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / meta.url.rsplit("/", 1)[1])
    model = create_model("mobilenet_v3_small", SMALL, 3, 64, pretrained=True)
    assert torch.equal(model.body.features[3].block[0][0].weight, state["features.3.block.0.0.weight"])


def test_input_spec_gives_the_preprocessing():
    data = Preprocess(size=(28, 28), channels=1, mean=(0.13,), std=(0.31,))
    scratch = create_model("cnn", 10, 3, 32)
    assert scratch.input_spec.preprocess(data) == Preprocess((32, 32), 3, (0.13,) * 3, (0.31,) * 3)
    with pytest.raises(ImgclfError, match="pass the data's preprocessing"):
        scratch.input_spec.preprocess()


def test_mnist_fast_learns_real_digits(mnist):
    """A few hundred Adam steps on 6,000 real training digits: far above chance on held-out test digits."""
    from imgclf.data import TensorSplit, batches, default_preprocess

    torch.manual_seed(0)
    train, test = mnist.split("train"), mnist.split("test")
    subset = TensorSplit(train.images[:6000], train.labels[:6000])
    preprocess = default_preprocess(mnist)
    model = create_model("mnist-fast", 10, 1, 28)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        for x, y in batches(subset, preprocess, 64, order=torch.randperm(6000, generator=generator)):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        x, y = next(batches(TensorSplit(test.images[:1000], test.labels[:1000]), preprocess, 1000))
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.95
