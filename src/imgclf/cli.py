"""The `imgclf` command: parses arguments, calls the library, prints results. Nothing else lives here."""

from __future__ import annotations

import argparse
import csv
import difflib
import io
import json
import logging
import math
import os
import signal
import sys
from pathlib import Path

import yaml

from imgclf import __version__
from imgclf.errors import ImgclfError

_MOVED = ("where the run's data is now, if it moved: its image folder, or the folder with a named dataset's files "
          "(default: where it was at training)")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 user error, 2 usage)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    _check_unknown(parser, args, extra)
    args.extra = extra
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    if _rank():  # under torchrun only rank 0 reports progress; the others say only what goes wrong
        level, args.quiet = max(level, logging.WARNING), True
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")  # other libraries: warnings
    logging.getLogger("imgclf").setLevel(level)
    try:
        status = args.run(args) or 0  # a command may report a partial failure in its exit status
    except ImgclfError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # disk full, permission denied, ...: the sentence the OS gives, with the path
        print(f"error: {err.strerror or err}{f': {err.filename}' if err.filename else ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgclf", description="Image classification with CNNs.")
    parser.add_argument("--version", action="version", version=f"imgclf {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    logs = argparse.ArgumentParser(add_help=False)  # every command takes these
    logs.add_argument("-v", "--verbose", action="store_true", help="debug log output")
    logs.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")

    data = commands.add_parser("data", help="look at a dataset").add_subparsers(
        dest="data_command", required=True, metavar="ACTION")
    source = argparse.ArgumentParser(add_help=False, parents=[logs])
    source.add_argument("source", help="dataset name (mnist, fashion-mnist, kmnist, cifar10, digits) "
                                       "or folder:PATH")
    source.add_argument("--data-dir", type=Path, help="folder with the dataset's files (default: "
                                                      "$IMGCLF_DATA_DIR, then the cache, then download)")
    source.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    source.add_argument("--split", type=_fractions, default=None, metavar="TRAIN,VAL,TEST",
                        help="fractions to split a plain image folder (default 0.8,0.1,0.1)")
    source.add_argument("--seed", type=int, default=0, help="seed of that split")
    source.add_argument("--strict", action="store_true", help="fail on unreadable files, empty classes, ...")

    info = data.add_parser("info", parents=[source], help="counts per class and split, shapes, mean/std")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(run=_data_info)
    preview = data.add_parser("preview", parents=[source], help="save a labelled grid of samples")
    preview.add_argument("--out", type=Path, default=Path("preview.png"), help="PNG to write")
    preview.add_argument("--subset", default="train", help="which split to show (default train)")
    preview.add_argument("--per-class", type=_positive, default=8, help="samples per class (default 8)")
    preview.set_defaults(run=_data_preview)

    summary = commands.add_parser("summary", parents=[logs],
                                  help="Keras-style layer table, parameters, multiply-adds, size")
    summary.add_argument("model", help="a model name (imgclf models list)")
    summary.add_argument("--input", type=_shape, default=None, metavar="CxHxW",
                         help="input shape (default: the model's own, e.g. 1x28x28 or 3x224x224)")
    summary.add_argument("--num-classes", type=_positive, default=10, help="classes of the head (default 10)")
    summary.add_argument("--freeze", default="none", help="backbone, none, or a number of stages")
    summary.add_argument("--option", action="append", default=[], type=_option, metavar="KEY=VALUE",
                         help="a model option, e.g. --option layers=10 --option kernel=5 (repeatable)")
    summary.set_defaults(run=_summary)

    training = commands.add_parser(
        "train", parents=[logs], help="train a model into a run directory",
        description="Train a model. Any config key can be set as --section.key VALUE, e.g. --train.lr 0.01 "
                    "--model.options '{layers: 10}' (imgclf config show lists every key).")
    training.add_argument("--config", type=Path, help=_CONFIG_HELP)
    training.add_argument("--dataset", help="dataset name or folder:PATH (data.dataset)")
    training.add_argument("--model", help="model name, or auto (the default): chosen from the data (model.name)")
    training.add_argument("--data-dir", help="folder with the dataset's files (data.data_dir)")
    training.add_argument("--epochs", type=float, help="epochs, may be fractional (train.epochs)")
    training.add_argument("--time", help="wall-time budget such as 5m (train.time)")
    training.add_argument("--device", help="auto, cpu, cuda, mps (train.device)")
    training.add_argument("--name", help="run directory name (default: <model>-<dataset>-<time>)")
    training.add_argument("--out", help="parent folder of run directories (default runs)")
    training.add_argument("--adversarial", choices=["none", "fgsm", "pgd"],
                          help="adversarial training: fit on attacked images (train.adversarial)")
    training.add_argument("--eps", type=float, help="adversarial training budget, L-inf in [0, 1] pixels (train.eps)")
    training.add_argument("--noise", type=float, help="noise augmentation: gaussian std up to this (data.noise)")
    training.add_argument("--resume", type=Path, metavar="RUN", help="continue this run exactly where it stopped")
    training.set_defaults(run=_train, overrides=True)

    finder = commands.add_parser(
        "lr-find", parents=[logs], help="learning-rate range test: plot and suggested lr",
        description="Train briefly with an exponentially rising learning rate and suggest one. Takes the "
                    "same --config, --dataset, --model and --section.key options as train.")
    _config_options(finder, ("dataset", "model", "data-dir", "device"))
    finder.add_argument("--steps", type=_positive, help="steps of the sweep (default: 3 epochs of batches, "
                                                        "at least 20 and at most 100)")
    finder.add_argument("--start", type=float, default=1e-6, help="first learning rate (default 1e-6)")
    finder.add_argument("--end", type=float, default=1.0, help="last learning rate (default 1)")
    finder.add_argument("--plot", type=Path, default=Path("lr_find.png"), help="plot to write (default lr_find.png)")
    finder.set_defaults(run=_lr_find, overrides=True)

    tune = commands.add_parser(
        "tune", parents=[logs], help="hyperparameter search (Optuna): grid, random or TPE, with pruning",
        description="Search a space of config values; every trial is a run directory selected on validation. "
                    "Takes the same options as train for the base config.")
    _config_options(tune, ("dataset", "model", "data-dir", "epochs", "device", "out"))
    tune.add_argument("--space", default="auto", help="auto (the default: lr, weight decay, batch size and dropout "
                                                       "around the model's settings), paper (Table III, for MNIST) "
                                                       "or a YAML file of key: choices/ranges")
    tune.add_argument("--sampler", default="tpe", help="grid, random or tpe (default tpe)")
    tune.add_argument("--pruner", default="median", help="median, hyperband or none (default median)")
    tune.add_argument("--trials", type=_positive, help="trials in total (default: the grid's size, else 20)")
    tune.add_argument("--time", help="wall-time budget for this process, e.g. 30m")
    tune.add_argument("--storage", help="an Optuna storage URL shared by workers (default: <study>/study.db)")
    tune.add_argument("--study", help="study name and folder under --out (default tune-<model>)")
    tune.add_argument("--seed", type=int, help="sampler seed, for a reproducible search (default: random; give "
                                               "workers sharing a study different seeds or none)")
    tune.set_defaults(run=_tune, overrides=True)

    scored_on = argparse.ArgumentParser(add_help=False, parents=[logs])  # evaluate, compare, robustness take these
    which = scored_on.add_mutually_exclusive_group()
    which.add_argument("--dataset", dest="source", metavar="NAME",
                       help="score on this dataset (default: the run's own)")
    which.add_argument("--data", dest="source", metavar="folder:PATH",
                       help="score on a folder of images (all of it; or, if it holds the run's own data moved, "
                            "the split the run recorded)")
    scored_on.add_argument("--data-dir", help=_MOVED)
    scored_on.add_argument("--split", help="split to score (default test, or val when the data has no test split; "
                                           "val is the run's validation)")
    scored_on.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    scoring = argparse.ArgumentParser(add_help=False, parents=[scored_on])
    scoring.add_argument("--resamples", type=_positive, default=1000, help="bootstrap resamples (default 1000)")
    scoring.add_argument("--tta", action="store_true",
                         help="test-time augmentation: average each image's logits with its mirror image's")
    scoring.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    scoring.add_argument("--latency-runs", type=_positive, default=100,
                         help="timed single-image passes for the latency percentiles (default 100)")
    evaluate = commands.add_parser("evaluate", parents=[scoring], help="metrics, plots and an HTML report of a run")
    evaluate.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory or an exported model file")
    evaluate.add_argument("--calibrate", action="store_true",
                          help="fit temperature scaling on the run's validation split and save it with the model")
    evaluate.add_argument("--out", type=Path, help="folder for report.json and report.html (default: the run)")
    evaluate.set_defaults(run=_evaluate)
    compare = commands.add_parser("compare", parents=[scoring],
                                  help="leaderboard of runs on the same test images, with significance tests")
    compare.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="two or more run directories")
    compare.add_argument("--out", type=Path, help="folder for compare.json and compare.html "
                                                  "(default: the folder holding the first run)")
    compare.set_defaults(run=_compare)

    cv = commands.add_parser(
        "cv", parents=[logs], help="k-fold cross-validation and/or several seeds of a training config",
        description="Train a config once per fold (stratified, on the training data) and seed; report each run "
                    "and the mean and standard deviation. Takes the same options as train.")
    _config_options(cv, ("dataset", "model", "data-dir", "epochs", "time", "device", "name", "out"))
    cv.add_argument("--folds", type=_positive, default=5, help="stratified folds (default 5; 1: the usual split)")
    cv.add_argument("--seeds", type=_positive, default=1, help="seeds per fold (default 1)")
    cv.set_defaults(run=_cv, overrides=True)

    export = commands.add_parser("export", parents=[logs], help="ONNX (optionally int8) or TorchScript, parity-checked")
    export.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory")
    export.add_argument("--format", default="onnx", help="onnx or torchscript (default onnx)")
    export.add_argument("--quantize", choices=["int8", "int8-dynamic"],
                        help="ONNX int8: static (calibrated on 512 training images) or dynamic")
    export.add_argument("--opset", type=_positive, default=18, help="ONNX opset (default 18, the oldest supported)")
    export.add_argument("--embed-normalization", action="store_true",
                        help="normalize inside the model: the input is the resized image scaled to [0, 1]")
    export.add_argument("--data-dir", help=_MOVED + "; read for the parity check")
    export.add_argument("--out", type=Path, help="folder for the exported file (default: the run)")
    export.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest probability difference to PyTorch accepted (default 1e-4)")
    export.set_defaults(run=_export)

    bench = commands.add_parser("benchmark", parents=[logs],
                                help="the model in every format: size, accuracy, latency, throughput, share of peak")
    bench.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory")
    bench.add_argument("--data-dir", help=_MOVED)
    bench.add_argument("--runs", type=_positive, default=100, help="timed single-image passes (default 100)")
    bench.add_argument("--batch", type=_positive, default=256, help="batch size for throughput (default 256)")
    bench.add_argument("--tolerance", type=float, default=1e-4,
                       help="largest probability difference of an export to PyTorch accepted (default 1e-4)")
    bench.add_argument("--max-drop", type=float, default=0.01, metavar="FRACTION",
                       help="largest test accuracy int8 may lose against fp32 (default 0.01, one point)")
    bench.set_defaults(run=_benchmark)

    explain = commands.add_parser("explain", parents=[logs], help="Grad-CAM, saliency or integrated gradients "
                                                                  "drawn over images")
    explain.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory")
    explain.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    explain.add_argument("--method", default="gradcam",
                         help="gradcam, saliency, integrated-gradients, a comma list, or all (default gradcam)")
    explain.add_argument("--target", metavar="CLASS", help="class to explain (default: the predicted one)")
    explain.add_argument("--layer", help="Grad-CAM layer (default: the model's target layer; see imgclf summary)")
    explain.add_argument("--out", type=Path, help="folder for the overlays (default RUN/explanations)")
    explain.set_defaults(run=_explain)

    robust = commands.add_parser("robustness", parents=[scored_on],
                                 help="accuracy under corruptions at 5 severities and under FGSM/PGD attacks")
    robust.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory (exported file: corruptions only)")
    robust.add_argument("--corruptions", default="all", help="all (default), none, or a comma list such as "
                                                             "gaussian_noise,rotation (a wrong name lists them all)")
    robust.add_argument("--attacks", default="all", help="all (fgsm and pgd, the default), fgsm, pgd or none")
    robust.add_argument("--eps", type=_number_list, default=(0.05, 0.1, 0.2, 0.3),
                        help="L-inf budgets in [0, 1] pixel units (default 0.05,0.1,0.2,0.3)")
    robust.add_argument("--steps", type=_positive, default=40, help="PGD steps (default 40)")
    robust.add_argument("--step-size", type=float, help="PGD step size (default 2.5 x eps / steps)")
    robust.add_argument("--no-random-start", dest="random_start", action="store_false",
                        help="start PGD at the image instead of a random point of the eps ball")
    robust.add_argument("--limit", type=_positive, default=2000,
                        help="score a seeded random sample of this many images (default 2000)")
    robust.add_argument("--all-images", dest="limit", action="store_const", const=None, help="score every image")
    robust.add_argument("--seed", type=int, default=0, help="seed of the sample, corruptions and PGD starts")
    robust.add_argument("--batch-size", type=_positive, default=500, help="images per pass (default 500)")
    robust.add_argument("--out", type=Path, help="folder for robustness.json and .html (default: the run)")
    robust.set_defaults(run=_robustness)

    predict = commands.add_parser("predict", parents=[logs], help="classify images with a trained model")
    predict.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory or an exported model file")
    predict.add_argument("images", nargs="+", metavar="IMAGE",
                         help="image files, folders (every image under them) or patterns such as 'new/**/*.jpg'")
    predict.add_argument("--top", type=_positive, default=3, help="classes shown per image (default 3)")
    predict.add_argument("--tta", action="store_true",
                         help="test-time augmentation: average each image's logits with its mirror image's")
    predict.add_argument("--format", choices=["table", "json", "csv"], default="table",
                         help="table (one line per image, the default), json or csv")
    predict.add_argument("--out", type=Path, help="write the predictions to this file instead of the screen")
    predict.add_argument("--batch-size", type=_positive, default=64, help="images per forward pass (default 64)")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    predict.set_defaults(run=_predict)

    serve = commands.add_parser("serve", parents=[logs], help="an HTTP service for a model, with feedback")
    serve.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory or an exported model file")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--max-batch", type=_positive, default=64, help="largest forward pass (default 64)")
    serve.add_argument("--max-wait-ms", type=float, default=2.0,
                       help="how long a request waits to share a batch (default 2; 0 with --max-batch 1: no batching)")
    serve.add_argument("--max-queue", type=_positive, default=512, help="queued images before 503 (default 512)")
    serve.add_argument("--max-body-mb", type=float, default=4.0, help="largest request body (default 4 MiB)")
    serve.add_argument("--max-pixels", type=_positive, default=4096 * 4096, help="largest image (default 4096x4096)")
    serve.add_argument("--deadline-ms", type=float, default=5000, help="per-request deadline (default 5000)")
    serve.add_argument("--invert", choices=["none", "auto", "always"], default="none",
                       help="auto: invert dark-on-light images (photos of digits) for MNIST-style models")
    serve.add_argument("--feedback-db", default="feedback.db",
                       help="SQLite file or PostgreSQL URL for feedback (default feedback.db; "
                            "postgresql://USER@HOST/DB for several replicas)")
    serve.add_argument("--threads", type=_positive, default=1,
                       help="torch threads for the forward pass (default 1: the event loop needs a core too)")
    serve.add_argument("--admin", action="store_true",
                       help="enable POST /admin/reload, with the token in $IMGCLF_ADMIN_TOKEN")
    serve.add_argument("--models-dir", type=Path,
                       help="the folder reload may take runs from (default: the folder holding RUN)")
    serve.set_defaults(run=_serve)

    feedback = commands.add_parser("feedback", help="the corrections collected by imgclf serve").add_subparsers(
        dest="feedback_command", required=True, metavar="ACTION")
    stats = feedback.add_parser("stats", parents=[logs], help="counts, corrections per label, common confusions")
    stats.add_argument("db", metavar="DB", help="the feedback database: file or URL (imgclf serve --feedback-db)")
    stats.set_defaults(run=_feedback_stats)
    dump = feedback.add_parser("export", parents=[logs], help="the images as a <label>/ folder to train on")
    dump.add_argument("db", metavar="DB", help="the feedback database: file or URL")
    dump.add_argument("--out", type=Path, required=True, help="folder to write <label>/<id>.<format> into")
    dump.set_defaults(run=_feedback_export)

    retrain = commands.add_parser("retrain", parents=[logs],
                                  help="fine-tune a run with the feedback it collected; promote it only if better")
    retrain.add_argument("run_dir", type=Path, metavar="RUN", help="the run directory that was served")
    retrain.add_argument("--feedback", required=True, metavar="DB", help="the feedback database: file or URL")
    retrain.add_argument("--epochs", type=float, default=1.0, help="fine-tuning epochs (default 1)")
    retrain.add_argument("--lr-factor", type=float, default=0.1, help="the run's lr times this (default 0.1)")
    retrain.add_argument("--holdout", type=float, default=0.3,
                         help="about this share of the feedback (chosen by image hash) judges the new model "
                              "(default 0.3)")
    retrain.add_argument("--min-holdout", type=_positive, default=10,
                         help="fewest held-out feedback images to decide on (default 10)")
    retrain.add_argument("--name", help="name of the new run (default <run>-retrained-<time>)")
    retrain.add_argument("--out", type=Path, help="parent folder of the new run (default: the old run's)")
    retrain.add_argument("--data-dir", help=_MOVED)
    retrain.set_defaults(run=_retrain)

    study = commands.add_parser("study", help="studies regenerated from real runs").add_subparsers(
        dest="study_command", required=True, metavar="STUDY")
    paper = study.add_parser(
        "paper", parents=[logs], help="the seed paper's comparison on MNIST: Tables II-IV, McNemar, PAPER.md",
        description="Train and evaluate the paper CNN, the enhanced CNN and its ablations, AlexNet, ResNet-18, "
                    "MobileNetV3 and imgclf's recipes on MNIST, run the Table III search, and write PAPER.md and "
                    "paper.html. Re-running skips finished work.")
    paper.add_argument("--out", type=Path, default=Path("studies/paper"), help="output folder (default studies/paper)")
    paper.add_argument("--budget", default="cpu", help="cpu (about half an hour on 2 cores, the default) or smoke "
                                                       "(seconds, to check the pipeline)")
    paper.add_argument("--dataset", default="mnist", help="the dataset (default mnist, as in the paper)")
    paper.add_argument("--data-dir", help="folder with the dataset's files (default: $IMGCLF_DATA_DIR, cache, "
                                          "download)")
    paper.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    paper.add_argument("--recipes", type=Path, help="folder of the recipes (default: the packaged ones)")
    paper.set_defaults(run=_study_paper)

    configs = commands.add_parser("config", help="the config keys").add_subparsers(
        dest="config_command", required=True, metavar="ACTION")
    show = configs.add_parser("show", parents=[logs], help="every config key with its value and meaning, as YAML")
    show.add_argument("recipe", nargs="?", metavar="RECIPE",
                      help="a YAML recipe or packaged recipe name (default: the defaults)")
    show.set_defaults(run=_config_show)

    models = commands.add_parser("models", help="the model zoo").add_subparsers(
        dest="models_command", required=True, metavar="ACTION")
    listing = models.add_parser("list", parents=[logs], help="names, parameters and default input of every model")
    listing.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*'")
    listing.set_defaults(run=_models_list)
    return parser


_CONFIG_HELP = "a YAML recipe: a file, or a packaged one by name (folder, mnist-fast, ...: imgclf config show NAME)"


def _check_unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """A usage error for an argument the command does not take (--section.key options aside, where taken),
    naming the closest option."""
    dotted = getattr(args, "overrides", False)
    unknown = [t for t in extra if not dotted or (t.startswith("--") and "." not in t.partition("=")[0])]
    if not unknown:
        return  # --section.key options and their values: the config checks them
    from imgclf.config import config_keys, suggest

    command = parser
    while command._subparsers is not None:  # down to the (sub)command that was parsed
        chooser = next(a for a in command._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))
        command = chooser.choices[getattr(args, chooser.dest)]
    flags = [flag for action in command._actions for flag in action.option_strings if flag not in ("-h", "--help")]
    keys = {key.rsplit(".", 1)[-1]: key for key, *_ in config_keys()} if dotted else {}  # lr: train.lr
    name = unknown[0].partition("=")[0]
    leaf = name.lstrip("-").replace("-", "_")
    close = next(iter(difflib.get_close_matches(name, flags, n=1)), None) if leaf not in keys else None
    key = None if close else suggest(leaf, list(keys))
    close = f"--{keys[key]}" if key else close
    command.error(f"unrecognized argument {unknown[0]}" + (f"; did you mean {close}?" if close else ""))


def _config_options(parser: argparse.ArgumentParser, flags: tuple[str, ...]) -> None:
    """--config and the given shortcut flags of train (see _SHORTCUTS), for commands built on a training config."""
    parser.add_argument("--config", type=Path, help=_CONFIG_HELP)
    for flag in flags:
        parser.add_argument(f"--{flag}", type=float if flag == "epochs" else str,
                            help=f"as for train ({_SHORTCUTS[flag.replace('-', '_')]})")


def _number_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, e.g. 0.1,0.3, got {text!r}") from None


def _names(text: str, every: list[str] | tuple[str, ...]) -> list[str]:
    """'all', 'none' or a comma list of names."""
    if text == "all":
        return list(every)
    return [] if text == "none" else [t.strip() for t in text.split(",") if t.strip()]


def _shape(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected CxHxW such as 3x224x224, got {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as layers=10, got {text!r}")
    return key, _yaml_value(value)


def _yaml_value(text: str) -> object:
    """A command-line value read as YAML (10 -> int, true -> bool, {a: 1} -> dict), else kept as text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


_SHORTCUTS = {"dataset": "data.dataset", "model": "model.name", "data_dir": "data.data_dir",
              "epochs": "train.epochs", "time": "train.time", "device": "train.device", "name": "name", "out": "out",
              "adversarial": "train.adversarial", "eps": "train.eps", "noise": "data.noise"}


def _dotted(tokens: list[str]) -> dict[str, object]:
    """['--train.lr', '0.01', '--model.options={layers: 10}'] -> {'train.lr': 0.01, ...}, values read as YAML."""
    overrides, i = {}, 0
    while i < len(tokens):
        key, sep, value = tokens[i].partition("=")
        if not key.startswith("--") or "." not in key:
            raise ImgclfError(f"unexpected argument {tokens[i]!r}; config keys look like --train.lr 0.01.")
        if not sep:
            if i + 1 >= len(tokens):
                raise ImgclfError(f"{key} needs a value, e.g. {key} 0.01.")
            value, i = tokens[i + 1], i + 1
        overrides[key[2:]] = _yaml_value(value)
        i += 1
    return overrides


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """Shortcut flags and --section.key options as one {dotted key: value} mapping."""
    overrides = {dotted: getattr(args, flag) for flag, dotted in _SHORTCUTS.items()
                 if getattr(args, flag, None) is not None}
    overrides.update(_dotted(args.extra))
    return overrides


def _lr_find(args: argparse.Namespace) -> None:
    from imgclf.evaluate.plots import lr_find_plot
    from imgclf.training.lr_find import lr_find

    if not 0 < args.start < args.end:
        raise ImgclfError(f"--start must be positive and below --end, got {args.start} and {args.end}.")
    lrs, losses, suggestion = lr_find(_resolved(args)[0], args.steps, args.start, args.end,
                                      progress=not args.quiet)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    lr_find_plot(lrs, losses, suggestion, args.plot)
    print(f"swept {len(lrs)} steps from {lrs[0]:.1e} to {lrs[-1]:.1e}; lowest loss {min(losses):.4f}")
    print(f"suggested lr: {suggestion:.2g} (--train.lr {suggestion:.2g}); plot: {args.plot}")


def _resolved(args: argparse.Namespace, overrides: dict[str, object] | None = None, summary: bool = False):
    """The config from --config and the options (default: all of them), with model auto replaced by the recipe
    chosen from the data (the options given win), checked first; and the plan (to print)."""
    from imgclf.config import given_keys, load_config
    from imgclf.training.loop import check_settings
    from imgclf.training.recipe import resolve

    overrides = _overrides(args) if overrides is None else overrides
    config = load_config(args.config, overrides)
    check_settings(config)
    plan = resolve(config, given_keys(args.config, overrides), summary=summary, named="model.name" in overrides)
    return plan.config, plan


def _train(args: argparse.Namespace) -> None:
    from imgclf.config import load_config
    from imgclf.training import LostProcess, train

    overrides = _overrides(args)
    if args.resume is not None:
        given = [flag for flag in ("config", "name", "out") if getattr(args, flag) is not None]
        if given:
            raise ImgclfError(f"--{', --'.join(given)} cannot be used with --resume: the run keeps its own "
                              "config and folder.")
        saved = args.resume / "config.yaml"
        config = load_config(saved, overrides) if saved.is_file() else None
    else:
        config, plan = _resolved(args, overrides, summary=not _rank())
        if not _rank():
            print("\n".join(plan.lines()), flush=True)
    try:
        run = train(config, resume=args.resume, progress=not args.quiet)
    except LostProcess as err:
        # the process group's threads may still wait on the lost process, and unwinding them at exit can
        # abort; the checkpoint is safe on disk, so leave at once
        print(f"error: {err}", file=sys.stderr, flush=True)
        os._exit(1)
    if _rank():
        return
    summary = run.summary
    best = summary.get("best") or {}
    print(f"run: {run.path}")
    print(f"{summary['stopped']} after {summary['epochs']:.2f} epochs ({summary['steps']} steps) "
          f"in {summary['train_seconds']:.1f}s of training")
    if best.get("metric", "epoch") != "epoch":
        print(f"best {best['metric']} {best['value']:.4f} at epoch {best['epoch']:.4g}, saved to "
              f"{run.path / 'model.safetensors'}")
    elif best:
        print(f"no validation split: the final weights are saved to {run.path / 'model.safetensors'}")
    if "test_acc" in summary:
        print(f"test accuracy {summary['test_acc']:.4f} (the saved model on the test split)")
    if summary["stopped"] == "interrupted":
        raise SystemExit(130)  # saved and resumable, but not finished: tell scripts so


def _spec(spec: list | dict) -> str:
    """A searched key's choices or range, short: '32|64' or '0.001-0.1 log'."""
    if isinstance(spec, list):
        return "|".join(map(_short, spec))
    return f"{_short(spec['low'])}-{_short(spec['high'])}" + (" log" if spec.get("log") else "")


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _text_table(headers: list[str], rows: list[list[str]], widest: int = 48) -> list[str]:
    """Left-aligned columns two spaces apart, each as wide as its longest cell; longer cells end in '..'."""
    cells = [[c if len(c) <= widest else c[:widest - 2] + ".." for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    return int(os.environ.get("RANK", "0"))


def _tune(args: argparse.Namespace) -> None:
    from imgclf.training import parse_duration
    from imgclf.tune import SPACES, load_space, model_space, tune, without_given

    overrides = {k: v for k, v in _overrides(args).items() if k != "train.time"}  # --time: the search budget
    config, plan = _resolved(args, overrides)
    space = model_space(config, plan.train_images) if args.space == "auto" else load_space(args.space)
    space, notes = without_given(space, overrides)
    for note in notes:
        print(f"note: {note}")
    searched = ", ".join(f"{key} {_spec(spec)}" for key, spec in space.items() if isinstance(spec, list | dict))
    print(f"searching {searched}" + (f" ({args.space} space, {config.model.name})" if args.space in SPACES else ""),
          flush=True)
    result = tune(config, space, sampler=args.sampler, pruner=args.pruner, trials=args.trials,
                  timeout=parse_duration(args.time) if args.time else None, storage=args.storage, study=args.study,
                  seed=args.seed, progress=False)
    best = result["best"]
    print(f"{result['trials']} trials ({result['pruned']} pruned, {result['failed']} failed), "
          f"{result['train_seconds']:.0f} s of training; "
          f"best {best['metric']} {best['value']:.4f} (trial {best['trial']}, {best['run']})")
    rows = [[row["parameter"], ", ".join(map(_short, row["values tested"])), _short(row["best"])]
            for row in result["table"]]
    print("\n".join(_text_table(["parameter", "values tested", "best"], rows)))
    test = result["test"]
    if test is None:
        print(f"the best trial's run {best['run']} is on another machine: score it there with imgclf evaluate")
    else:
        print(f"test accuracy of the best configuration: {test['accuracy']:.4f} [{test['accuracy_ci'][0]:.4f}, "
              f"{test['accuracy_ci'][1]:.4f}] 95% CI (imgclf evaluate {best['run']} for the full report)")
    print(f"study: {result['study']} (trials.csv, best.yaml: imgclf train --config {result['study']}/best.yaml)")


def _evaluate(args: argparse.Namespace) -> None:
    from imgclf.evaluate.evaluation import evaluate_run

    r, html = evaluate_run(args.run_dir, _score_on(args), calibrate=args.calibrate, resamples=args.resamples,
                           seed=args.seed, latency_runs=args.latency_runs, out=args.out, progress=not args.quiet,
                           tta=args.tta)
    ci, eff, temp, fair = r.confidence_intervals, r.efficiency, r.temperature, r.fairness
    print(f"{r.model} on {r.dataset} {r.split} ({r.samples:,} images)")
    print(f"accuracy   {r.accuracy:.4f}  [{ci['accuracy'][0]:.4f}, {ci['accuracy'][1]:.4f}] 95% bootstrap CI")
    print(f"macro F1   {r.macro['f1']:.4f}  [{ci['macro_f1'][0]:.4f}, {ci['macro_f1'][1]:.4f}]")
    print(f"top-{r.top_k['k']}      {r.top_k['accuracy']:.4f}   log loss {r.log_loss:.4f}   ROC AUC macro "
          + ("n/a" if r.macro_auc is None else f"{r.macro_auc:.4f}"))
    print(f"ECE        {temp['ece_uncalibrated']:.4f} uncalibrated, {r.calibration['ece']:.4f} at temperature "
          f"{temp['value']:.3f}" + (" (fitted now, saved into model.json)" if args.calibrate else ""))
    print(f"worst class {fair['worst_class']} at {fair['worst_accuracy']:.4f} (gap to best {fair['gap']:.4f}); "
          "most confused: " + (", ".join(f"{p['true']}->{p['predicted']} ({p['count']})"
                                        for p in r.most_confused[:3]) or "none"))
    lat = eff["latency_ms"]
    print(f"latency at batch 1 p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms; "
          f"{eff['throughput']['images_per_second']:,.0f} images/s at batch {eff['throughput']['batch']} "
          f"({eff['device']}, {eff['threads']} threads)")
    print(f"params {eff['params']:,}, FLOPs {eff['flops'] / 1e6:,.2f} M per image")
    for note in r.notes:
        print(f"note: {note}")
    print(f"report: {html} (numbers in {html.with_suffix('.json')})")


def _score_on(args: argparse.Namespace):
    """The data a command scores on, from its --dataset/--data, --data-dir, --split and --device."""
    from imgclf.evaluate.evaluation import ScoreOn

    return ScoreOn(args.source, args.data_dir, args.split, args.device)


def _compare(args: argparse.Namespace) -> None:
    from imgclf.evaluate.compare import compare_runs
    from imgclf.evaluate.report import p_value

    result, html = compare_runs(args.runs, _score_on(args), resamples=args.resamples, seed=args.seed,
                                latency_runs=args.latency_runs, out=args.out, progress=not args.quiet, tta=args.tta)
    board = result.leaderboard
    width = max(len("run"), *(len(e.name) for e in board))
    print(f"{result.dataset} {result.split}, {result.samples:,} images, 95% bootstrap CIs")
    print(f"{'run':<{width}}  {'accuracy [95% CI]':<26}{'macro F1':>9}{'params':>12}{'p50 ms':>9}  McNemar p vs best")
    for e in board:
        low, high = e.ci["accuracy"]
        versus = "best" if e.vs_best is None else p_value(e.vs_best["p_value"])
        print(f"{e.name:<{width}}  {e.accuracy:.4f} [{low:.4f}, {high:.4f}]  {e.macro_f1:>9.4f}"
              f"{e.params:>12,}{e.latency_ms['p50']:>9.2f}  {versus}")
    for p in result.published:
        print(f"published: {p['model']} {p['accuracy']:.4f} ({p['source'].split(',')[0]} et al.)")
    print(f"report: {html} (numbers in {html.with_suffix('.json')})")


def _cv(args: argparse.Namespace) -> None:
    from imgclf.cv import check_counts, cross_validate

    check_counts(args.folds, args.seeds)  # before the data is read for the recipe
    result, path = cross_validate(_resolved(args)[0], args.folds, args.seeds,
                                  progress=not args.quiet)
    shown = [m for m in ("val_acc", "val_loss", "test_acc") if m in result["summary"]]
    print(f"{'fold':>4} {'seed':>4}  " + "".join(f"{m:>10}" for m in shown) + "  run")
    for r in result["runs"]:
        print(f"{r['fold']:>4} {r['seed']:>4}  " + "".join(f"{r[m]:>10.4f}" for m in shown) + f"  {r['run']}")
    print("mean +/- std (sample): " + ", ".join(
        f"{m} {result['summary'][m]['mean']:.4f} +/- {result['summary'][m]['std']:.4f}" for m in shown))
    print(f"results: {path}")


def _explain(args: argparse.Namespace) -> None:
    from imgclf.explain import METHODS, explain_files

    records, grid = explain_files(args.run_dir, args.images, tuple(_names(args.method, METHODS)), target=args.target,
                            layer=args.layer, out=args.out)
    for r in records:
        why = "" if r["explained"] == r["predicted"] else f", explaining {r['explained']}"
        print(f"{r['image']}: {r['predicted']} ({r['probability']:.3f}){why} -> "
              + ", ".join(str(path) for path in r["overlays"].values()))
    print(f"all together: {grid}")


def _robustness(args: argparse.Namespace) -> None:
    from imgclf.attacks import ATTACKS
    from imgclf.robustness import CORRUPTIONS, SEVERITIES, robustness

    r, html = robustness(args.run_dir, corruptions=_names(args.corruptions, list(CORRUPTIONS)),
                         attack_names=tuple(_names(args.attacks, ATTACKS)), eps=args.eps, steps=args.steps,
                         step_size=args.step_size, random_start=args.random_start, limit=args.limit, seed=args.seed,
                         batch_size=args.batch_size, source=args.source, data_dir=args.data_dir, split=args.split,
                         device=args.device, out=args.out, progress=not args.quiet)
    print(f"{r['model']} on {r['images']:,} {r['dataset']} {r['split']} images: clean accuracy "
          f"{r['clean_accuracy']:.4f}")
    if r["corruptions"]:
        print(f"{'corruption':<16}" + "".join(f"{f'sev {s}':>8}" for s in range(1, SEVERITIES + 1)) + f"{'mean':>8}")
        for name, c in r["corruptions"].items():
            print(f"{name:<16}" + "".join(f"{a:>8.4f}" for a in c["accuracy"]) + f"{c['mean_accuracy']:>8.4f}")
        drop = r["relative_degradation"]
        print(f"mean corruption accuracy {r['mean_corruption_accuracy']:.4f} (relative degradation "
              + ("n/a: clean accuracy is 0)" if drop is None else f"{drop:.1%})"))
    for name, a in r["attacks"].items():
        if name != "settings":
            print(f"{name} accuracy: " + ", ".join(f"eps {e}: {v:.4f}" for e, v in a["accuracy_by_eps"].items()))
    print(f"report: {html} (numbers in {html.with_suffix('.json')})")


def _serve(args: argparse.Namespace) -> None:
    try:
        import torch
        import uvicorn

        from imgclf.serve.app import ServeConfig, create_app
    except ImportError as err:
        raise ImgclfError(f"serving needs the serve extra ({err.name} is missing): "
                          "pip install 'imgclf[serve]'.") from err
    token = os.environ.get("IMGCLF_ADMIN_TOKEN") if args.admin else None
    if args.admin and not token:
        raise ImgclfError("--admin needs a token in the environment: export IMGCLF_ADMIN_TOKEN=<a long secret>.")
    config = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                         max_body_mb=args.max_body_mb, max_pixels=args.max_pixels, deadline_ms=args.deadline_ms,
                         invert=args.invert, feedback_db=args.feedback_db, admin_token=token,
                         models_dir=str(args.models_dir or args.run_dir.resolve().parent))
    app = create_app(args.run_dir, config)
    print(f"serving {args.run_dir} on http://{args.host}:{args.port} (API docs at /docs; Ctrl-C or SIGTERM stops "
          "after the requests in flight)", flush=True)
    # SIGTERM: uvicorn stops accepting, finishes in-flight requests and runs the app's shutdown, then re-raises
    # the signal to the handler it found; a no-op one lets the command end with status 0 (a normal stop)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    torch.set_num_threads(args.threads)
    uvicorn.run(app, host=args.host, port=args.port, log_level="debug" if args.verbose else "warning",
                timeout_graceful_shutdown=30)


def _feedback_stats(args: argparse.Namespace) -> None:
    from imgclf.serve.feedback import stats

    r = stats(args.db)
    print(f"{r['feedback']} feedback rows; {r['confirmed']} confirmed the prediction")
    print("per label: " + (", ".join(f"{label}: {n}" for label, n in r["per_label"].items()) or "none"))
    print("most common corrections: " + (", ".join(f"{c['predicted']} -> {c['label']} ({c['count']})"
                                                   for c in r["confusions"]) or "none"))
    if r["unscored"]:
        print(f"not counted above: {r['unscored']} rows without a prediction (images sent with a correction to an "
              "older server)")
    print("by model version: " + ", ".join(f"{v or 'unknown'}: {n}" for v, n in r["model_versions"].items()))


def _feedback_export(args: argparse.Namespace) -> None:
    from imgclf.serve.feedback import export

    count = export(args.db, args.out)
    print(f"wrote {count} images into {args.out}/<label>/ (train on them: --dataset folder:{args.out})")


def _retrain(args: argparse.Namespace) -> None:
    from imgclf.retrain import retrain

    r = retrain(args.run_dir, args.feedback, epochs=args.epochs, lr_factor=args.lr_factor, holdout=args.holdout,
                min_holdout=args.min_holdout, name=args.name, out=args.out, data_dir=args.data_dir,
                progress=not args.quiet)
    print(f"fine-tuned on the run's data plus {r['feedback_train_images']} corrected images")
    print(f"{'':<8}{'test accuracy':>16}{'held-out feedback':>20}  run")
    for when in ("before", "after"):
        test, held = r[when]["test"], r[when]["feedback"]
        print(f"{when:<8}{test['accuracy']:>16.4f}{held['accuracy']:>12.4f} of {held['images']:<5}  {r[when]['run']}")
    print(f"McNemar p on the test split: {r['test_mcnemar']['p_value']:.3g}")
    print(("promoted: " if r["promoted"] else "not promoted: ") + r["reason"]
          + (f" (CURRENT in {Path(r['after']['run']).parent} names it)" if r["promoted"] else ""))


def _study_paper(args: argparse.Namespace) -> None:
    from imgclf.study import RECIPES, command_line, study_paper

    path = study_paper(args.out, budget=args.budget, dataset=args.dataset, data_dir=args.data_dir, device=args.device,
                       recipes=args.recipes or RECIPES, command=command_line(), progress=not args.quiet)
    print(f"wrote {path} and {path.with_name('paper.html')} (runs in {args.out / 'runs'})")


def _export(args: argparse.Namespace) -> None:
    from imgclf.export import export_run

    path, info = export_run(args.run_dir, args.format, quantize=args.quantize, opset=args.opset,
                            embed_normalization=args.embed_normalization,
                            out=args.out, data_dir=args.data_dir, tolerance=args.tolerance)
    parity = info["parity"]
    print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB) and {path.name}.json")
    print(f"parity with PyTorch on {parity['images']} test images: max |p - p_torch| {parity['max_abs_diff']:.2e}, "
          f"top-1 agreement {parity['top1_agreement']:.4f}")
    if "int8" in info:
        q = info["int8"]
        print(f"int8 vs fp32 (onnxruntime, whole test split): accuracy {q['fp32']['accuracy']:.4f} -> "
              f"{q['int8']['accuracy']:.4f} ({q['accuracy_change'] * 100:+.2f} points), size {q['fp32']['mb']:.2f} -> "
              f"{q['int8']['mb']:.2f} MiB, {q['fp32']['images_per_second']:,.0f} -> "
              f"{q['int8']['images_per_second']:,.0f} images/s at batch 256")
    print(f"use it: imgclf predict {path} IMAGE, imgclf evaluate {path}")


def _benchmark(args: argparse.Namespace) -> None:
    from imgclf.benchmark import benchmark_formats

    result = benchmark_formats(args.run_dir, data_dir=args.data_dir, runs=args.runs, batch=args.batch,
                               tolerance=args.tolerance, max_drop=args.max_drop)
    beaten = "" if result["peak_from"] == "matmul" else (
        f" ({result['peak_from']} ran faster, {result['peak_gflops']:,.1f} GFLOP/s: that is the peak here)")
    print(f"{result['model']} from {result['run']}: {result['flops_per_image'] / 1e6:,.2f} MFLOPs per image; "
          f"{result['images']:,} test images; {result['threads']} threads; measured float32 matmul peak "
          f"{result['matmul_gflops']:,.1f} GFLOP/s{beaten}")
    throughput = f"img/s @{result['batch']}"
    print(f"{'format':<24}{'MiB':>8}{'accuracy':>10}{'p50 ms':>9}{'p99 ms':>9}{throughput:>12}{'vs eager':>10}"
          f"{'of peak':>9}")
    for r in result["rows"]:
        if r["failed"]:
            print(f"{r['format']:<24}FAILED: {r['failed']}")
            continue
        share = "n/a" if r["peak_fraction"] is None else f"{r['peak_fraction']:.1%}"
        print(f"{r['format']:<24}{r['file_mb']:>8.3f}{r['accuracy']:>10.4f}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}"
              f"{r['images_per_second']:>12,.0f}{r['speedup']:>9.2f}x{share:>9}")
    print("of peak: FLOPs per image (2 per multiply-add, as the matmul is counted) x img/s over that peak; "
          "int8 runs integer arithmetic, whose peak is another, so it has none")
    if result["failed"]:
        raise ImgclfError(f"{len(result['failed'])} of {len(result['rows'])} formats failed "
                          f"({', '.join(result['failed'])}); the reasons are in the table above.")


def _predict(args: argparse.Namespace) -> int:
    from imgclf.files import atomic_write
    from imgclf.predict import image_paths, predict_files

    paths = image_paths(args.images)
    if not paths:
        raise ImgclfError(f"no images in {', '.join(map(str, args.images))}; pass image files, folders or patterns.")
    found = predict_files(args.run_dir, paths, args.top, args.tta, batch_size=args.batch_size, device=args.device,
                         progress=not args.quiet)
    text = _PREDICTION_FORMATS[args.format](found)
    if args.out:
        atomic_write(args.out, lambda tmp: tmp.write_text(text))
        print(f"wrote {len(found)} predictions to {args.out}")
    else:
        print(text, end="")
    failed = sum(p.error is not None for p in found)
    if failed:
        print(f"{failed} of {len(found)} images could not be classified (see their lines)", file=sys.stderr)
    return 1 if failed else 0


def _table(found: list) -> str:
    return "".join(f"{p.path}: " + (f"error: {p.error}" if p.error else ", ".join(f"{label} {prob:.3f}"
                                                                                   for label, prob in p.top)) + "\n"
                   for p in found)


def _json(found: list) -> str:
    return json.dumps([{"path": str(p.path), "top": [{"label": label, "probability": prob} for label, prob in p.top],
                        "error": p.error} for p in found], indent=2) + "\n"


def _csv(found: list) -> str:
    top = max((len(p.top) for p in found), default=0)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", *(f"{k}_{i}" for i in range(1, top + 1) for k in ("label", "probability")), "error"])
    for p in found:
        cells = [c for label, prob in p.top for c in (label, f"{prob:.6f}")]
        writer.writerow([p.path, *cells, *[""] * (2 * top - len(cells)), p.error or ""])
    return buffer.getvalue()


_PREDICTION_FORMATS = {"table": _table, "json": _json, "csv": _csv}


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _fractions(text: str) -> dict[str, float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.8,0.1,0.1, got {text!r}") from None
    if len(values) not in (2, 3) or not all(math.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected 2 or 3 non-negative fractions (train,val[,test]), got {text!r}")
    if sum(values) > 1 + 1e-9:  # shares of the images: more than all of them is a typo, not weights to rescale
        raise argparse.ArgumentTypeError(f"the fractions {text} add up to {sum(values):g}, more than 1; give "
                                         "shares of the images that add up to 1, e.g. 0.8,0.1,0.1")
    return dict(zip(("train", "val", "test"), values, strict=False))


def _load(args: argparse.Namespace):
    from imgclf.data import load_dataset

    return load_dataset(args.source, args.data_dir, allow_download=not args.no_download,
                        fractions=args.split, seed=args.seed, strict=args.strict)


def _data_info(args: argparse.Namespace) -> None:
    from imgclf.data import describe

    info = describe(_load(args))
    if args.json:
        print(json.dumps(info, indent=2))
        return
    splits = list(info["splits"])
    print(f"{info['name']}: {len(info['classes'])} classes, "
          + ", ".join(f"{info['splits'][s]['count']:,} {s}" for s in splits))
    print("image shape (CxHxW): " + ", ".join(f"{shape} ({n:,})" for shape, n in list(info["shapes"].items())[:5])
          + (" ..." if len(info["shapes"]) > 5 else ""))
    print(f"train mean {_floats(info['mean'])}  std {_floats(info['std'])}")
    width = max(len("class"), *map(len, info["classes"]))
    print(f"\n{'class':<{width}}  " + "  ".join(f"{s:>8}" for s in splits))
    for c in info["classes"]:
        print(f"{c:<{width}}  " + "  ".join(f"{info['splits'][s]['per_class'][c]:>8,}" for s in splits))
    if info["problems"]:
        print(f"\n{len(info['problems'])} problem(s) found; see the warnings above.")


def _data_preview(args: argparse.Namespace) -> None:
    from imgclf.data.preview import preview_grid

    if args.out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        raise ImgclfError(f"--out {args.out} needs an image file name ending in .png (or .jpg, .webp, .bmp).")
    dataset = _load(args)
    grid = preview_grid(dataset.split(args.subset), dataset.classes, per_class=args.per_class, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out} ({grid.width}x{grid.height}, {args.subset} split of {dataset.name})")


def _build_meta(name: str, num_classes: int, shape: tuple[int, int, int] | None, **kwargs):
    """The model on the meta device: real shapes and counts, no memory or compute for the weights."""
    import torch

    from imgclf.models import create_model, model_entry

    if shape is not None and shape[1] != shape[2]:
        raise ImgclfError(f"imgclf models take square inputs; got {shape[1]}x{shape[2]}.")
    with torch.device("meta"):
        model = create_model(name, num_classes, shape[0] if shape else None,
                             shape[1] if shape else model_entry(name).default_size, **kwargs)
    return model, (model.input_spec.channels, *model.input_spec.size)


def _summary(args: argparse.Namespace) -> None:
    from imgclf.models import summarize

    options = dict(args.option)
    reserved = sorted(set(options) & {"num_classes", "in_channels", "image_size", "pretrained", "weights", "freeze"})
    if reserved:
        raise ImgclfError(f"--option {', '.join(reserved)} is not a model option; use --input, --num-classes "
                          "or --freeze instead.")
    model, shape = _build_meta(args.model, args.num_classes, args.input, freeze=args.freeze, **options)
    summary = summarize(model, shape)
    print(f"{args.model} at input {'x'.join(map(str, shape))}, {args.num_classes} classes")
    print(summary.table())


def _config_show(args: argparse.Namespace) -> None:
    from imgclf.config import config_keys, load_config

    section = None
    for key, value, default, meaning in config_keys(load_config(args.recipe)):
        *parent, name = key.split(".")
        if parent and parent[0] != section:
            section = parent[0]
            print(f"{section}:")
        note = "" if value == default else f" [default {_yaml_text(default)}]"
        print(f"{'  ' * len(parent)}{name}: {_yaml_text(value)}  # {meaning}{note}")


def _yaml_text(value: object) -> str:
    """A value as it is written in a YAML recipe, on one line."""
    return yaml.safe_dump([value], default_flow_style=True, width=1 << 30).strip()[1:-1]  # [v] -> v


def _models_list(args: argparse.Namespace) -> None:
    from imgclf.models import list_models, model_entry, summarize

    names = list_models(args.pattern)
    if not names:
        raise ImgclfError(f"no model matches {args.pattern!r}; `imgclf models list` shows them all.")
    print(f"{'model':<20}{'params':>13}{'mult-adds':>12}  {'input':<11}{'pretrained':<11}description")
    for name in names:
        entry = model_entry(name)
        model, shape = _build_meta(name, 10, None)
        summary = summarize(model, shape)
        print(f"{name:<20}{summary.total:>13,}{summary.macs / 1e6:>11,.1f}M  {'x'.join(map(str, shape)):<11}"
              f"{'yes' if entry.pretrained else 'no':<11}{entry.description}")
    print("params and multiply-adds with a 10-class head at the default input.")


def _floats(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"
