"""Export to ONNX and TorchScript: parity with PyTorch on real MNIST images, int8, use by predict and
evaluate, the benchmark table (a failed format is a row), and clear errors."""

import json
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from imgclf.cli import main
from imgclf.config import load_config
from imgclf.data import Preprocess
from imgclf.errors import ImgclfError
from imgclf.evaluate.compare import compare_runs
from imgclf.evaluate.evaluation import device_for, evaluate_run
from imgclf.export import export_run
from imgclf.models import create_model, summarize
from imgclf.predict import predict_files
from imgclf.rundir import load_model, preprocess_of, save_model
from imgclf.runtime import ExportedModel, open_model
from imgclf.training import train

CLASSES = [str(d) for d in range(10)]


def _run_dir(folder, mnist_dir, name: str, size: int = 28):
    """A run directory holding an untrained `name` for MNIST (parity does not need a trained model)."""
    folder.mkdir(parents=True)
    model = create_model(name, 10, 1, size).eval()
    save_model(folder, model, CLASSES, Preprocess((size, size), 1, (0.1307,), (0.3081,)), dataset="mnist")
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"dataset": "mnist", "data_dir": str(mnist_dir)}}))
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_dir):
    config = load_config(None, {"out": str(tmp_path_factory.mktemp("runs")), "name": "fast", "data.dataset": "mnist",
                                "data.data_dir": str(mnist_dir), "data.subset": 6000, "data.augment": "none",
                                "train.epochs": 1, "train.batch_size": 128})
    return train(config, progress=False).path


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize(("name", "size"), [("mnist-fast", 28), ("cnn", 28), ("paper-cnn", 28), ("mnist-best", 28),
                                            ("resnet18", 32)])
def test_export_matches_pytorch_on_real_images(tmp_path, mnist, mnist_dir, name, size, fmt):
    run = _run_dir(tmp_path / name, mnist_dir, name, size)
    path, info = export_run(run, fmt, samples=64)
    assert path.is_file() and json.loads(path.with_name(path.name + ".json").read_text()) == info
    assert info["parity"]["images"] == 64 and info["parity"]["max_abs_diff"] <= 1e-4
    assert info["classes"] == CLASSES and info["source"]["run"] == str(run)
    # logits too (an untrained model's probabilities are all near 0.1), at a batch size not traced
    model, meta = load_model(run)
    x = preprocess_of(meta)(mnist.split("test").images[:3])
    with torch.no_grad():
        np.testing.assert_allclose(ExportedModel(path)(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_embedded_normalization_takes_images_scaled_to_0_1(trained, tmp_path, mnist):
    path, info = export_run(trained, "onnx", embed_normalization=True, out=tmp_path)
    assert info["preprocess"]["mean"] == [0.0] and info["preprocess_of_source"]["mean"] == [0.1307]
    images = mnist.split("test").images[:8].float() / 255  # what a consumer feeds: resized, scaled to [0, 1]
    model, meta = load_model(trained)
    with torch.no_grad():
        expected = model(preprocess_of(meta).normalize(images)).numpy()
    np.testing.assert_allclose(ExportedModel(path)(images).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_exported_models_run_on_the_cpu_when_a_gpu_is_auto_picked(trained, tmp_path, monkeypatch):
    path, _ = export_run(trained, "torchscript", out=tmp_path)
    model, _ = open_model(path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_for(model, "auto") == torch.device("cpu")


def test_exported_models_predict_and_evaluate_like_the_run(trained, tmp_path, mnist):
    onnx_path, _ = export_run(trained, "onnx", out=tmp_path / "onnx")
    script_path, _ = export_run(trained, "torchscript", out=tmp_path / "ts", embed_normalization=True)
    images = []
    for i in range(5):
        images.append(tmp_path / f"{i}.png")
        Image.fromarray(mnist.split("test").images[i, 0].numpy()).save(images[-1])
    expected = [p.top for p in predict_files(trained, images, top=3)]
    for exported in (onnx_path, script_path):
        got = [p.top for p in predict_files(exported, images, top=3)]
        assert [[c for c, _ in row] for row in got] == [[c for c, _ in row] for row in expected]
        np.testing.assert_allclose([[p for _, p in row] for row in got], [[p for _, p in row] for row in expected],
                                   atol=1e-5)
    report, html = evaluate_run(onnx_path, resamples=20, latency_runs=3)
    assert html.parent == tmp_path / "onnx" / "report-model.onnx"  # not over the run's own report
    summary = json.loads((trained / "summary.json").read_text())
    assert report.accuracy == summary["test_acc"] and report.samples == 10_000
    assert report.model_file == str(onnx_path)
    assert report.efficiency["flops"] == 2 * summarize(load_model(trained)[0], (1, 28, 28)).macs
    assert report.efficiency["file_mb"] == pytest.approx(onnx_path.stat().st_size / 2**20, abs=1e-3)
    result, _ = compare_runs([trained, script_path], out=tmp_path / "cmp", resamples=20, latency_runs=3)
    assert {e.name for e in result.leaderboard} == {"fast", "ts/model.torchscript.pt"}
    assert result.leaderboard[1].vs_best["p_value"] == 1.0  # the same answers on every image


def test_int8_keeps_accuracy_and_shrinks_the_file(trained, tmp_path):
    path, info = export_run(trained, "onnx", quantize="int8", out=tmp_path)
    q = info["int8"]
    assert path.name == "model.int8.onnx" and abs(q["accuracy_change"]) <= 0.005
    assert q["int8"]["mb"] < q["fp32"]["mb"] / 1.5
    dynamic, info = export_run(trained, "onnx", quantize="int8-dynamic", out=tmp_path)
    assert dynamic.name == "model.int8-dynamic.onnx" and abs(info["int8"]["accuracy_change"]) <= 0.005


def test_export_errors_are_clear_and_leave_nothing_behind(trained, tmp_path):
    with pytest.raises(ImgclfError, match="nothing does not exist; pass a run directory"):
        export_run(tmp_path / "nothing")
    with pytest.raises(ImgclfError, match="unknown export format 'tflite'; choose onnx or torchscript"):
        export_run(trained, "tflite")
    with pytest.raises(ImgclfError, match="opset 11 is too old"):
        export_run(trained, "onnx", opset=11)
    with pytest.raises(ImgclfError, match="--quantize int8 is not available for torchscript"):
        export_run(trained, "torchscript", quantize="int8")
    with pytest.raises(ImgclfError, match=r"disagrees with PyTorch.*nothing was written"):
        export_run(trained, "onnx", out=tmp_path / "strict", tolerance=-1.0)  # no export can pass this
    assert list((tmp_path / "strict").iterdir()) == []
    with pytest.raises(ImgclfError, match="there is no exported model"):
        predict_files(trained / "model.int8.onnx", [])  # not the run's PyTorch model in its place
    path, _ = export_run(trained, "onnx", out=tmp_path / "ok")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ImgclfError, match="does not match the checksum"):
        predict_files(path, [])
    path.with_name(path.name + ".json").unlink()
    with pytest.raises(ImgclfError, match="an exported model needs the JSON written beside it"):
        predict_files(path, [])


def test_cli_export(trained, tmp_path, capsys):
    assert main(["export", str(trained), "--out", str(tmp_path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "parity with PyTorch on 256 test images" in out and (tmp_path / "model.onnx").is_file()
    assert main(["export", str(trained), "--format", "coreml"]) == 1
    assert "unknown export format" in capsys.readouterr().err


def test_benchmark_keeps_going_when_one_format_fails_its_gate(tmp_path, write_image, capsys):
    """int8 cannot gain 100 points of accuracy (--max-drop -1): that row fails, every other format is measured,
    the table is printed and the exit status says a format failed."""
    data = tmp_path / "photos"
    for split, count in (("train", 8), ("test", 4)):
        for label in ("a", "b"):
            for i in range(count):
                write_image(data / split / label / f"{i}.png", size=(16, 16), seed=hash((split, label, i)) % 999)
    run = tmp_path / "run"
    run.mkdir()
    save_model(run, create_model("mnist-fast", 2, 3, 16).eval(), ["a", "b"],
               Preprocess((16, 16), 3, (0.5,) * 3, (0.25,) * 3), dataset=f"folder:{data}")
    assert main(["benchmark", str(run), "--runs", "3", "--batch", "4", "--max-drop", "-1", "-q"]) == 1
    out, err = capsys.readouterr()
    lines = {line.split("  ")[0]: line for line in out.splitlines()}
    assert lines["onnxruntime int8"].startswith("onnxruntime int8        FAILED: int8 quantization changed test "
                                                "accuracy by +0.00 points (the least accepted: +100.00)")
    for name in ("pytorch", "pytorch channels_last", "torchscript", "onnxruntime fp32"):
        assert lines[name].endswith("%")  # measured, with its share of the peak
    shares = [float(share) for share in re.findall(r"([\d.]+)%$", out, re.MULTILINE)]
    assert len(shares) == 4 and all(0 <= share <= 100 for share in shares)
    assert "1 of 5 formats failed (onnxruntime int8)" in err and "--quantize" not in out + err
    assert "measured float32 matmul peak" in out
