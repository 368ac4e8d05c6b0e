import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from imgclf.cli import main

BIN = Path(sys.executable).parent


def test_data_info_mnist_from_the_installed_command(mnist_dir):
    out = subprocess.run([BIN / "imgclf", "data", "info", "mnist", "--data-dir", str(mnist_dir)],
                         capture_output=True, text=True, check=True).stdout
    assert "mnist: 10 classes, 60,000 train, 10,000 test" in out
    assert "image shape (CxHxW): 1x28x28 (60,000)" in out
    assert "train mean (0.1307)  std (0.3081)" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[4:] if line.strip()}
    assert rows["0"] == ["5,923", "980"] and rows["9"] == ["5,949", "1,009"]


def test_python_dash_m_and_bad_input_exit_cleanly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "imgclf", "data", "info", "mnist", "--no-download"],
                            capture_output=True, text=True, env={**os.environ, "IMGCLF_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.startswith("error: mnist: cannot find train-images-idx3-ubyte.gz")
    assert "Traceback" not in result.stderr


def test_preview_writes_a_labelled_grid(mnist_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "grid.png"
    assert main(["data", "preview", "mnist", "--data-dir", str(mnist_dir), "--out", str(out),
                 "--per-class", "5"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as grid:
        assert grid.format == "PNG" and grid.mode == "RGB"
        assert grid.height == 10 * 68 + 4 and grid.width > 5 * 68  # 10 rows of 64 px tiles, name column
        pixels = grid.convert("L").load()
        column = grid.width - 5 * 68 + 32  # middle of the first tile of the first row (class 0)
        assert any(pixels[column, y] > 128 for y in range(4, 68))  # a white stroke on black


def test_folder_info_json_and_strict(image_folder, capsys):
    assert main(["data", "info", f"folder:{image_folder}", "--json", "--split", "0.5,0.5"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"]["train"]["per_class"] == {"cat": 5, "dog": 5}
    assert len(info["problems"]) == 2
    assert main(["data", "info", f"folder:{image_folder}", "--strict"]) == 1
    assert "fails --strict (2 file(s) skipped)" in capsys.readouterr().err


def test_usage_errors(capsys):
    assert main(["data", "info", "nope"]) == 1
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    assert main(["data", "preview", "digits", "--subset", "val"]) == 1
    assert "digits has no 'val' split; it has train, test" in capsys.readouterr().err


def test_summary_prints_table_ii(capsys):
    assert main(["summary", "paper-cnn", "--input", "3x224x224"]) == 0
    out = capsys.readouterr().out
    for text in ("body.conv1 (Conv2d)", "(None, 32, 224, 224)", "896", "18,496", "25,690,240", "1,290",
                 "Total params: 25,710,922", "Multiply-adds per image: 300,254,464"):
        assert text in out


def test_summary_options_and_freeze(capsys):
    assert main(["summary", "cnn", "--option", "layers=10", "--option", "kernel=5", "--freeze", "backbone"]) == 0
    out = capsys.readouterr().out
    assert "body.conv10 (_Unit)" not in out and "body.conv10.conv (Conv2d)" in out
    assert "Trainable params: 1,290" in out  # only the head: 128 features x 10 classes + 10
    assert main(["summary", "cnn", "--input", "1x28x30"]) == 1
    assert "square inputs" in capsys.readouterr().err


def test_models_list(capsys):
    assert main(["models", "list", "resnet*"]) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out and "11,181,642" in out and "3x224x224" in out and "alexnet" not in out
    assert main(["models", "list", "nothing*"]) == 1


def test_cli_bad_values_are_one_line_errors(capsys, tmp_path):
    assert main(["summary", "cnn", "--option", "freeze=backbone"]) == 1
    assert "--option freeze is not a model option" in capsys.readouterr().err
    assert main(["summary", "cnn", "--option", "pools=-1"]) == 1
    assert "poolings would shrink" in capsys.readouterr().err
    assert main(["data", "preview", "digits", "--out", str(tmp_path / "grid")]) == 1
    assert "needs an image file name ending in .png" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["data", "preview", "digits", "--out", str(tmp_path / "file" / "grid.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_sigterm_stops_training_cleanly_and_it_resumes(tmp_path):
    import signal
    import time

    command = [BIN / "imgclf", "train", "--dataset", "digits", "--out", str(tmp_path), "--name", "t", "--epochs", "500",
               "--train.schedule", "constant", "--train.batch_size", "32", "-q"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "t" / "metrics.csv").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # wait for the first epoch to end, so the stop comes mid-run
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted" in out and "--resume" in err
    assert main(["train", "--resume", str(tmp_path / "t"), "--epochs", "2", "-q"]) == 0
