import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from imgclf.attacks import pgd
from imgclf.cli import main
from imgclf.config import Config, load_config
from imgclf.data import batches
from imgclf.errors import ImgclfError
from imgclf.models import create_model
from imgclf.rundir import load_model, preprocess_of
from imgclf.training import RunSummary, StopReason, TrainingError, parse_duration, train
from imgclf.training.optim import make_optimizer, make_schedule

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _config(tmp_path, mnist_dir, **overrides) -> Config:
    """A small MNIST run: 2,000 real training images, tiny model, seconds per run."""
    base = {"out": str(tmp_path / "runs"), "data.dataset": "mnist", "data.data_dir": str(mnist_dir),
            "data.subset": 2000, "data.augment": "none", "data.num_workers": 0, "model.name": "mnist-fast",
            "train.epochs": 1, "train.batch_size": 64, "train.lr": 0.01}
    return load_config(None, {**base, **overrides})


def test_overfits_a_single_small_batch(tmp_path, mnist_dir):
    config = _config(tmp_path, mnist_dir, **{"data.subset": 32, "data.val_fraction": 0.0, "train.batch_size": 32,
                                             "train.epochs": 60, "train.schedule": "constant",
                                             "train.weight_decay": 0.0})
    run = train(config, progress=False)
    assert run.history[-1]["train_loss"] < 0.05 and run.history[-1]["train_acc"] == 1.0


def test_short_real_mnist_run_writes_a_complete_run_directory(tmp_path, mnist_dir):
    run = train(_config(tmp_path, mnist_dir, **{"data.subset": 6000, "train.epochs": 2}), progress=False)
    names = {p.name for p in run.path.iterdir()}
    assert {"config.yaml", "model.safetensors", "model.json", "state.pt", "metrics.csv", "summary.json"} <= names
    assert "tensorboard" not in names  # tracking is off unless asked for
    assert run.summary.test_acc > 0.9 and run.history[-1]["val_acc"] > 0.9  # chance is 0.1
    rows = list(csv.DictReader((run.path / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and {"train_loss", "val_acc", "lr", "seconds"} <= set(rows[0])
    meta = json.loads((run.path / "model.json").read_text())
    assert meta["classes"] == [str(d) for d in range(10)] and meta["preprocess"]["mean"] == [0.1307]
    model, _ = load_model(run.path)  # the saved model gives the reported test accuracy
    assert model.config["name"] == "mnist-fast"
    assert load_config(run.path / "config.yaml") == run.config  # re-runnable as-is


def test_resume_is_exact(tmp_path, mnist_dir):
    """Stopped part-way through epoch 1 and resumed == uninterrupted: same losses, same weights.
    Augmentation, dropout and weight averaging all draw random numbers or carry state across the stop."""
    overrides = {"data.augment": "digits", "model.name": "cnn", "train.epochs": 2, "train.ema": 0.9,
                 "model.options": {"layers": 2, "width": 8, "dropout": 0.3}}
    whole = train(_config(tmp_path, mnist_dir, name="whole", **overrides), progress=False)
    cut = train(_config(tmp_path, mnist_dir, name="cut", **overrides), progress=False, max_steps=10)
    assert cut.summary.stopped is StopReason.MAX_STEPS and cut.history == []
    resumed = train(resume=cut.path, progress=False)
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in whole.history]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in resumed.history] == strip
    a, b = load_file(whole.path / "model.safetensors"), load_file(resumed.path / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    last_a = torch.load(whole.path / "state.pt", weights_only=True)["model"]
    last_b = torch.load(resumed.path / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)


def test_resume_refuses_a_changed_config_and_a_damaged_checkpoint(tmp_path, mnist_dir):
    run = train(_config(tmp_path, mnist_dir), progress=False, max_steps=3)
    changed = _config(tmp_path, mnist_dir, **{"model.name": "cnn", "train.lr": 0.5, "train.epochs": 3})
    with pytest.raises(TrainingError, match=r"cannot resume .* with a different model.name, train.lr, train.epochs "
                                            r"\(the onecycle"):
        train(changed, resume=run.path, progress=False)
    state = run.path / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(TrainingError, match=r"state.pt is damaged and cannot be resumed"):
        train(resume=run.path, progress=False)
    assert (run.path / "model.safetensors").is_file()  # the saved model is untouched
    with pytest.raises(ImgclfError, match="not a resumable run directory"):
        train(resume=tmp_path, progress=False)


def test_nan_loss_stops_with_a_message_and_saves_no_nan(tmp_path, mnist_dir):
    config = _config(tmp_path, mnist_dir, **{"train.lr": 1e9, "train.schedule": "constant",
                                             "train.optimizer": "sgd", "train.epochs": 3})
    with pytest.raises(TrainingError, match=r"the loss became (nan|inf) at epoch \d+, step \d+"):
        train(config, progress=False)
    for weights in tmp_path.glob("runs/*/model.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(weights).values())


def test_a_nan_batch_can_be_skipped(tmp_path, mnist_dir):
    from imgclf.training.loop import Trainer

    config = _config(tmp_path, mnist_dir, **{"train.nonfinite": "skip"})
    trainer = Trainer(config, tmp_path, progress=False)
    model = trainer.parts.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    x[0, 0, 0, 0] = float("nan")  # one corrupt input poisons the batch's loss
    trainer._step(x, y)
    assert trainer.skipped == 1 and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    trainer._step(torch.randn(8, 1, 28, 28), y)
    assert trainer.skipped == 1 and not torch.equal(before["head.weight"], model.head.weight)


def test_time_budget_ends_cleanly_and_resumes(tmp_path, mnist_dir):
    run = train(_config(tmp_path, mnist_dir, **{"train.time": "0.01s", "train.epochs": 2}), progress=False)
    assert run.summary.stopped is StopReason.TIME and run.summary.steps >= 1
    assert (run.path / "model.safetensors").is_file()
    assert train(resume=run.path, progress=False).summary.stopped is StopReason.TIME  # the budget is total time
    longer = load_config(run.path / "config.yaml", {"train.time": None})
    assert train(longer, resume=run.path, progress=False).summary.stopped is StopReason.DONE


def test_early_stopping(tmp_path, mnist_dir):
    config = _config(tmp_path, mnist_dir, **{"train.lr": 0.0, "train.schedule": "constant", "train.epochs": 5,
                                             "train.early_stop": 2, "train.monitor": "val_loss"})
    run = train(config, progress=False)
    assert run.summary.stopped is StopReason.EARLY_STOP and len(run.history) == 3  # best at 1, then 2 without


def test_transfer_schedule_trains_only_the_head_first(tmp_path, mnist_dir):
    from torchvision.models import resnet18

    weights = tmp_path / "r18.pth"  # stands in for downloaded weights: a torchvision state dict
    torch.save(resnet18().state_dict(), weights)
    overrides = {"model.name": "resnet18", "model.weights": str(weights), "data.dataset": "digits",
                 "data.image_size": 32, "data.subset": 256, "train.freeze_epochs": 1,
                 "train.epochs": 1, "data.val_fraction": 0.0, "train.schedule": "step"}
    run = train(_config(tmp_path, mnist_dir, name="frozen", **overrides), progress=False)
    initial = create_model("resnet18", 10, 1, 32, weights=weights).state_dict()
    trained = load_file(run.path / "model.safetensors")
    body = [k for k in initial if k.startswith("body.") and initial[k].is_floating_point()]
    assert all(torch.equal(initial[k], trained[k]) for k in body)
    assert not torch.equal(initial["head.weight"], trained["head.weight"])
    longer = load_config(run.path / "config.yaml", {"train.epochs": 2})
    resumed = train(longer, resume=run.path, progress=False)
    final = load_file(resumed.path / "model.safetensors")
    assert not torch.equal(initial["body.conv1.weight"], final["body.conv1.weight"])


def test_weight_decay_spares_biases_and_norms_and_backbone_lr():
    model = create_model("resnet18", 10, 3, 32)
    cfg = load_config(None, {"train.freeze_epochs": 1, "train.backbone_lr": 0.1, "train.lr": 0.01}).train
    groups = make_optimizer(model, cfg).param_groups
    for group in groups:
        assert (group["weight_decay"] > 0) == all(p.ndim > 1 for p in group["params"])
    body = {id(p) for p in model.body.parameters()}
    assert {g["lr"] for g in groups if id(g["params"][0]) in body} == {0.001}
    assert {g["lr"] for g in groups if id(g["params"][0]) not in body} == {0.01}


@pytest.mark.parametrize(("schedule", "expected"), [
    ("step", [1.0, 1.0, 0.1, 0.1, 0.01]), ("cosine", [0.5, 1.0, 1.0, 0.854, 0.5]),
    ("constant", [1.0] * 5)])
def test_schedules(schedule, expected):
    model = create_model("mnist-fast")
    cfg = load_config(None, {"train.schedule": schedule, "train.lr": 1.0, "train.step_epochs": 1,
                             "train.warmup": 1.0}).train
    optimizer = make_optimizer(model, cfg)
    scheduler, per_step = make_schedule(optimizer, cfg, steps_per_epoch=2, total_steps=6)
    lrs = []
    for _ in range(5):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert per_step and lrs == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "rmsprop"])
def test_every_optimizer_trains(tmp_path, mnist_dir, optimizer):
    lr = {"adam": 0.003, "adamw": 0.003, "sgd": 0.05, "rmsprop": 0.001}[optimizer]
    run = train(_config(tmp_path, mnist_dir, **{"train.optimizer": optimizer, "train.lr": lr,
                                                "train.label_smoothing": 0.1, "train.class_weights": True,
                                                "train.clip": 1.0}), progress=False)
    assert run.history[-1]["val_acc"] > 0.5


def test_config_errors(tmp_path, mnist_dir):
    with pytest.raises(ImgclfError, match=r"unknown config key train.learning_rate"):
        load_config(None, {"train.learning_rate": 0.1})
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(ImgclfError, match="is not valid YAML"):
        load_config(bad)
    with pytest.raises(ImgclfError, match=r"train.optimizer must be one of adam, .* got 'adamx'; did you mean adam\?"):
        train(_config(tmp_path, mnist_dir, **{"train.optimizer": "adamx"}), progress=False)
    with pytest.raises(ImgclfError, match="time budget 'soon' is not a duration"):
        parse_duration("soon")
    assert parse_duration("1.5h") == 5400 and parse_duration("90s") == 90 and parse_duration("5m") == 300
    with pytest.raises(ImgclfError, match="fp16 needs CUDA"):
        train(_config(tmp_path, mnist_dir, name="fp16", **{"train.precision": "fp16", "train.device": "cpu"}),
              progress=False)
    assert not (tmp_path / "runs").exists()  # a run that could not start leaves no folder behind
    train(_config(tmp_path, mnist_dir, name="taken"), progress=False, max_steps=1)
    with pytest.raises(ImgclfError, match="already exists; continue it with --resume"):
        train(_config(tmp_path, mnist_dir, name="taken"), progress=False)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid(path):
    config = load_config(path)
    create_model(config.model.name, 10, 1, config.data.image_size, **config.model.options)
    assert set(yaml.safe_load(path.read_text())) <= {"name", "out", "data", "model", "train"}


def test_cli_train_predict_and_bf16(tmp_path, mnist_dir, capsys, write_image):
    args = ["train", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--out", str(tmp_path), "--name", "cli",
            "--epochs", "0.5", "--data.subset", "3000", "--train.precision", "bf16", "-q"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"run: {tmp_path / 'cli'}" in out and "test accuracy" in out
    digit = tmp_path / "digit.png"
    from PIL import Image

    from imgclf.data import load_dataset
    Image.fromarray(load_dataset("mnist", mnist_dir).split("test").images[0, 0].numpy()).save(digit)  # a 7
    assert main(["predict", str(tmp_path / "cli"), str(digit), "--top", "2"]) == 0
    line = capsys.readouterr().out.strip()
    top = [(label, float(p)) for label, p in re.findall(r"(\d) ([0-9.]+)", line.split(": ", 1)[1])]
    assert line.startswith(f"{digit}: ") and top[0][0] == "7" and len(top) == 2
    assert 1 >= top[0][1] >= top[1][1] >= 0 and top[0][1] + top[1][1] <= 1.0001
    assert main(["train", "--dataset", "mnist", "--train.nope", "1"]) == 1
    assert "unknown config key train.nope" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), str(digit)]) == 1
    assert "is not a run directory" in capsys.readouterr().err


def test_lr_find_suggests_a_rate_and_plots(tmp_path, mnist_dir, capsys):
    plot = tmp_path / "lr.png"
    args = ["lr-find", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--data.subset", "3000",
            "--train.batch_size", "64", "--steps", "60", "--start", "1e-5", "--end", "1e4", "--plot", str(plot), "-q"]
    assert main(args) == 0
    out = capsys.readouterr().out
    suggestion = float(re.search(r"suggested lr: ([0-9.e-]+)", out)[1])
    assert 1e-5 < suggestion < 1.0  # far below where a 10x-per-10-steps sweep makes the loss explode
    swept = re.search(r"swept (\d+) steps", out)[1]
    assert int(swept) < 60  # the loss diverged before lr 1e4 and the sweep stopped early
    from PIL import Image
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.width > 300
    assert not list(tmp_path.glob("runs*"))  # nothing saved as a run


def test_lr_find_steps_on_the_training_loss(tmp_path, mnist_dir, monkeypatch):
    """The range test optimizes what training does (here with label smoothing), not a plain cross-entropy."""
    from imgclf.training.lr_find import lr_find
    from imgclf.training.parts import Parts

    shared, seen = Parts.batch_loss, []

    def spy(parts, net, x, y):
        logits, loss = shared(parts, net, x, y)
        seen.append((logits.detach(), y, loss.item()))
        return logits, loss

    monkeypatch.setattr(Parts, "batch_loss", spy)
    config = _config(tmp_path, mnist_dir, **{"data.subset": 200, "train.batch_size": 32,
                                             "train.label_smoothing": 0.5})
    _, losses, _ = lr_find(config, steps=3, progress=False)
    logits, y, loss = seen[0]
    assert losses[0] == pytest.approx(loss)  # the sweep's first value is its first batch's training loss
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.5).item())
    assert loss != pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-3)


def test_lr_find_takes_few_steps_on_small_data():
    from imgclf.training.lr_find import default_steps

    assert default_steps(images=40, batch_size=16) == 20  # 2 batches an epoch: the 20-step floor, seconds
    assert default_steps(images=640, batch_size=32) == 60  # 3 epochs of 20 batches
    assert default_steps(images=60000, batch_size=256) == 100


def test_run_files_are_readable_by_others_as_the_umask_allows(tmp_path, mnist_dir):
    """Temp files are created owner-only (0600); what a run writes has the usual 0666 less the umask."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    run = train(_config(tmp_path, mnist_dir, **{"data.subset": 300}), progress=False)
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.path.iterdir() if p.is_file()}
    assert {"model.safetensors", "model.json", "state.pt", "config.yaml", "metrics.csv"} <= set(modes)
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_package_level_api():
    import imgclf

    assert imgclf.train is train and imgclf.load_config is load_config


@pytest.mark.parametrize("in_memory", ["true", "false"])
def test_training_on_an_image_folder(tmp_path, capsys, in_memory):
    """Two classes of RGB PNGs of different sizes (bright vs dark), decoded once into memory or streamed
    every epoch, by DataLoader workers."""
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for label, (low, high) in {"bright": (150, 256), "dark": (0, 100)}.items():
        for i in range(40):
            side = 20 + i % 7
            pixels = torch.randint(low, high, (side, side + 3, 3), generator=rng, dtype=torch.uint8)
            (tmp_path / "photos" / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.numpy()).save(tmp_path / "photos" / label / f"{i}.png")
    args = ["train", "--dataset", f"folder:{tmp_path / 'photos'}", "--model", "mnist-fast", "--out", str(tmp_path),
            "--name", "folder", "--epochs", "4", "--data.image_size", "16", "--data.num_workers", "2",
            "--train.batch_size", "16", "--train.lr", "0.01", "--train.class_weights", "true",
            "--data.in_memory", in_memory, "-q"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert float(re.search(r"test accuracy ([0-9.]+)", out)[1]) >= 0.75
    meta = json.loads((tmp_path / "folder" / "model.json").read_text())
    assert meta["classes"] == ["bright", "dark"] and meta["preprocess"]["size"] == [16, 16]
    assert meta["preprocess"]["channels"] == 3
    assert main(["predict", str(tmp_path / "folder"), str(tmp_path / "photos" / "dark" / "3.png")]) == 0
    assert capsys.readouterr().out.split(": ")[1].startswith("dark")


def test_a_fractional_last_epoch_resumes_into_the_same_epoch(tmp_path, mnist_dir):
    overrides = {"train.schedule": "constant", "data.augment": "digits"}
    straight = train(_config(tmp_path, mnist_dir, name="straight", **overrides), progress=False)
    half = train(_config(tmp_path, mnist_dir, name="half", **overrides, **{"train.epochs": 0.5}), progress=False)
    assert [row["epoch"] for row in half.history] == [0.5]
    longer = load_config(half.path / "config.yaml", {"train.epochs": 1})
    resumed = train(longer, resume=half.path, progress=False)
    assert [row["epoch"] for row in resumed.history] == [0.5, 1]
    assert resumed.history[-1]["train_loss"] == straight.history[-1]["train_loss"]  # the whole epoch's loss
    a, b = load_file(straight.path / "model.safetensors"), load_file(resumed.path / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_settings_are_checked_before_anything_is_written(tmp_path, mnist_dir):
    for overrides, message in [({"train.batch_size": 0}, "train.batch_size must be at least 1"),
                               ({"train.label_smoothing": 2}, r"train.label_smoothing must be in \[0, 1\)"),
                               ({"train.epochs": float("nan")}, "train.epochs must be a positive number"),
                               ({"train.time": "0s"}, "train.time must be a positive duration"),
                               ({"data.val_fraction": 0.0, "train.schedule": "plateau"}, "watch the validation split")]:
        with pytest.raises(ImgclfError, match=message):
            train(_config(tmp_path, mnist_dir, **overrides), progress=False)
    assert not (tmp_path / "runs").exists()
    assert load_config(None, {"train.lr": "1e-3"}).train.lr == 0.001  # YAML reads 1e-3 as text


def test_weight_averaging_warms_up_on_short_runs(tmp_path, mnist_dir):
    run = train(_config(tmp_path, mnist_dir, **{"train.ema": 0.999}), progress=False)  # only 28 steps
    assert run.history[-1]["val_acc"] > 0.8  # a plain 0.999 average would still be mostly the random init


def test_adversarial_training_resumes_exactly_and_resists_the_attack_it_trained_on(tmp_path, mnist_dir, mnist):
    """PGD training (Madry et al. 2018) with noise augmentation on top: its random starts and noise come from the
    run's saved generator, so a cut run resumes to the same weights; and it beats standard training under PGD."""
    overrides = {"train.adversarial": "pgd", "train.eps": 0.1, "train.attack_steps": 3, "data.noise": 0.2,
                 "train.epochs": 1}
    whole = train(_config(tmp_path, mnist_dir, name="adv", **overrides), progress=False, test=False)
    cut = train(_config(tmp_path, mnist_dir, name="cut", **overrides), progress=False, max_steps=5, test=False)
    resumed = train(resume=cut.path, progress=False, test=False)
    a, b = load_file(whole.path / "model.safetensors"), load_file(resumed.path / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    standard = train(_config(tmp_path, mnist_dir, name="standard"), progress=False, test=False)
    x, y = mnist.splits["test"].images[:500].float() / 255, mnist.splits["test"].labels[:500]

    def attacked_accuracy(path) -> float:
        model, meta = load_model(path)
        pre = preprocess_of(meta)
        adv = pgd(lambda p: model(pre.normalize(p)), x, y, 0.1, steps=10, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return float((model(pre.normalize(adv)).argmax(1) == y).float().mean())

    robust, plain = attacked_accuracy(whole.path), attacked_accuracy(standard.path)
    assert robust > plain + 0.15, (robust, plain)  # measured 0.71 vs 0.46


def test_fgsm_training_attacks_from_a_random_start_without_touching_batch_norm(tmp_path, mnist_dir):
    from imgclf.training.loop import Trainer

    config = _config(tmp_path, mnist_dir, **{"train.adversarial": "fgsm", "train.eps": 0.2})
    trainer = Trainer(config, tmp_path, progress=False)
    model, pre = trainer.parts.model.train(), trainer.parts.preprocess
    x, y = next(iter(batches(trainer.parts.train_split, pre, 32)))
    buffers = [b.clone() for b in model.buffers()]
    adv = trainer._adversarial(x, y)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    assert model.training  # back in training mode after the attack
    change = (pre.denormalize(adv) - pre.denormalize(x)).abs()
    assert float(change.max()) <= 0.2 + 1e-5
    assert 0.05 < float(change[change > 0].mean()) < 0.2  # a random start and one 1.25 eps step, clipped
    assert train(config, progress=False, max_steps=3).summary.stopped is StopReason.MAX_STEPS


def test_adversarial_and_noise_settings_are_checked(tmp_path, mnist_dir):
    for key, value, message in [("train.adversarial", "cw", "adversarial must be one of none, fgsm, pgd, got 'cw'"),
                                ("train.eps", 0.0, r"train.eps must be in \(0, 1\], pixel units .* got 0.0"),
                                ("train.attack_steps", 0, "train.attack_steps must be at least 1"),
                                ("data.noise", -0.1, "data.noise must be 0 or more")]:
        with pytest.raises(ImgclfError, match=message):
            train(_config(tmp_path, mnist_dir, **{key: value}), progress=False)
    assert not (tmp_path / "runs").exists()


def test_run_summary_reads_old_and_writes_the_same_summary_json(tmp_path):
    old = {"stopped": "early stopping", "epochs": 3.0, "steps": 30, "device": "cpu", "threads": 2, "best": {},
           "train_seconds": 1.5, "process_seconds": 2.0, "skipped_steps": 0}  # before processes, image counts
    summary = RunSummary.from_json(old)
    assert summary.stopped is StopReason.EARLY_STOP and summary.stopped.finished and summary.best is None
    assert summary.processes == 1 and summary.test_acc is None and f"{summary.stopped}" == "early stopping"
    full = {**old, "stopped": "interrupted", "processes": 2, "best": {"value": 0.9, "metric": "val_acc", "epoch": 2,
            "step": 20}, "train_images": 90, "val_images": 10, "test_acc": 0.8}
    RunSummary.from_json(full).save(tmp_path / "summary.json")
    assert json.loads((tmp_path / "summary.json").read_text()) == full
    again = RunSummary.read(tmp_path)
    assert again.best.value == 0.9 and not again.stopped.finished and RunSummary.read(tmp_path / "none") is None
