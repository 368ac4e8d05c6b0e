"""Typed configuration: dataclasses, read from YAML, changed by dotted overrides; unknown keys are errors."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import io
import math
import os
import re
import tokenize
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import yaml

from imgclf.errors import ImgclfError
from imgclf.files import is_plain_name

RECIPES = Path(__file__).resolve().parent / "configs"  # the packaged recipes, found by name: --config mnist-fast


@dataclass(frozen=True)
class Rule:
    """The values a key allows beyond its type: a test, its words for errors, and names to suggest from."""

    test: Callable[[object], bool]
    words: str
    names: tuple[str, ...] = ()


# Each key's type says what values it allows: a Literal lists them, a Rule in Annotated bounds them.
Fraction = Annotated[float, Rule(lambda v: 0 <= v < 1, "in [0, 1)")]
Share = Annotated[float, Rule(lambda v: 0 < v < 1, "between 0 and 1 (exclusive)")]
Positive = Annotated[float, Rule(lambda v: 0 < v < math.inf, "a positive number")]
NonNegative = Annotated[float, Rule(lambda v: 0 <= v < math.inf, "0 or more")]
Count = Annotated[int, Rule(lambda v: v >= 1, "at least 1")]
Natural = Annotated[int, Rule(lambda v: v >= 0, "0 or more")]
Folds = Annotated[int, Rule(lambda v: v >= 2, "at least 2")]
Eps = Annotated[float, Rule(lambda v: 0 < v <= 1, "in (0, 1], pixel units of images scaled to [0, 1]")]
Freeze = Annotated[str, Rule(lambda v: v in ("none", "backbone") or v.isdigit(), "backbone, none or a number of "
                             "stages", ("none", "backbone"))]
Device = Annotated[str, Rule(lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
                             "auto, cpu, cuda (or cuda:N) or mps", ("auto", "cpu", "cuda", "mps"))]
Augmentation = Literal["auto", "none", "digits", "photos", "light"]
Optimizer = Literal["adam", "adamw", "sgd", "rmsprop"]
Schedule = Literal["constant", "step", "plateau", "cosine", "onecycle"]
Precision = Literal["fp32", "bf16", "fp16"]
Attack = Literal["none", "fgsm", "pgd"]
Tracker = Literal["tensorboard", "mlflow"]  # experiment trackers
FolderName = Annotated[str, Rule(is_plain_name, "a plain folder name (no /, \\ or ..; the parent is out)")]

# Each key's meaning is the comment beside its field (continued on comment lines below it): `imgclf config show`.

@dataclass
class DataConfig:
    dataset: str = "mnist"  # a name (mnist, fashion-mnist, kmnist, cifar10, digits) or folder:PATH
    data_dir: str | None = None  # where the dataset's files are (default: $IMGCLF_DATA_DIR, cache, download)
    val_fraction: Fraction = 0.1  # validation split carved from the training data, stratified
    test_fraction: Fraction | None = None  # a plain image folder (no train/val/test subfolders) keeps this much for
    # testing and val_fraction for validation; null: the 80/10/10 split of runs from before this key
    split_seed: int = 0  # seed of the validation and test splits
    folds: Folds | None = None  # cross-validation: validate on fold `fold` of this many stratified folds
    fold: Natural = 0  # which fold validates, 0 to folds - 1
    subset: Count | None = None  # train on the first N training images only (quick runs)
    augment: Augmentation = "auto"  # none, digits, photos, light, or auto (digits for digit datasets, photos
    # otherwise)
    noise: NonNegative = 0.0  # noise augmentation on top: gaussian noise with a std drawn per image from [0, noise]
    image_size: Count | None = None  # input size in pixels (default: the model's own)
    channels: Literal[1, 3] | None = None  # input channels, 1 or 3 (default: the model's)
    num_workers: Natural = 2  # DataLoader workers for image folders
    in_memory: bool | None = None  # image folders: decode once into memory (true), stream every epoch (false),
    # or, when null, in memory if the prepared images take at most memory_limit_gb
    memory_limit_gb: NonNegative = 2.0  # the most memory (GiB) in_memory null decodes images into
    strict: bool = False  # fail on unreadable files instead of skipping them
    extra: str | None = None  # a <class>/ folder of more training images (imgclf feedback export), always trained on
    unlabelled: str | None = None  # semi-supervised: a folder of unlabelled images (folder:PATH or PATH; searched at
    # any depth, folder names ignored), trained on with confident pseudo-labels (FixMatch); see train.unlabelled_*

    def fractions(self) -> dict[str, float] | None:
        """How a plain image folder is split: train, val_fraction, test_fraction (None: 80/10/10)."""
        if self.test_fraction is None:
            return None
        return {"train": 1 - self.val_fraction - self.test_fraction, "val": self.val_fraction,
                "test": self.test_fraction}


@dataclass
class ModelConfig:
    name: str = "auto"  # a model name (imgclf models list), or auto: chosen from the data
    pretrained: bool = False  # start from ImageNet weights (torchvision backbones; downloaded once)
    weights: str | None = None  # a local weights file instead of downloading pretrained ones
    freeze: Freeze = "none"  # backbone, none, or a number of stages, after freeze_epochs
    options: dict = field(default_factory=dict)  # model-specific, e.g. {layers: 10, kernel: 5}
    init: str | None = None  # start from this run directory's weights (same model and classes): fine-tuning


@dataclass
class TrainConfig:
    epochs: Positive = 1.0  # passes over the training data; may be fractional: 0.5 trains half an epoch
    batch_size: Count = 256  # images per training step
    optimizer: Optimizer = "adamw"  # adam, adamw, sgd, rmsprop
    lr: NonNegative = 0.02  # learning rate (the peak of the schedule)
    weight_decay: NonNegative = 5e-4  # not applied to biases and norm layers
    momentum: Fraction = 0.9  # momentum of sgd and rmsprop
    nesterov: bool = True  # Nesterov momentum (sgd)
    schedule: Schedule = "onecycle"  # constant, step, plateau, cosine, onecycle
    warmup: NonNegative = 0.0  # epochs of linear warm-up (cosine)
    step_epochs: Count = 10  # step: multiply the lr by gamma every step_epochs
    gamma: Share = 0.1  # step and plateau factor
    plateau_patience: Natural = 2  # plateau: epochs without improvement before lowering the lr
    label_smoothing: Fraction = 0.0  # share of each target spread over the other classes
    class_weights: bool = False  # weight the loss by inverse class frequency (imbalanced data)
    monitor: Literal["val_acc", "val_loss"] = "val_acc"  # val_acc or val_loss: picks the best epoch, early
    # stopping, plateau
    early_stop: Count | None = None  # stop after this many epochs without improvement
    time: str | None = None  # wall-time budget of this session, e.g. 90s, 5m, 1h: ends cleanly, resumable
    freeze_epochs: Natural = 0  # transfer learning: train only the head for this many epochs first
    backbone_lr: NonNegative = 0.1  # then train the body at lr x this factor (discriminative lr)
    ema: Share | None = None  # decay of an exponential moving average of the weights, e.g. 0.999
    clip: Positive | None = None  # clip the gradient norm to this value
    precision: Precision = "fp32"  # fp32, bf16 (CPU or CUDA), fp16 (CUDA)
    channels_last: bool = False  # channels-last memory format (faster convolutions on some GPUs)
    device: Device = "auto"  # auto (cuda, mps, cpu), or one of them
    nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss: stop, or skip the step
    adversarial: Attack = "none"  # none, fgsm (random start, 1.25 eps step) or pgd: train on attacked images
    eps: Eps = 0.3  # adversarial training: L-inf budget in pixel units (images scaled to [0, 1])
    attack_steps: Count = 7  # pgd: steps per batch (step size 2.5 x eps / steps, random start)
    sync_bn: bool = False  # torchrun on GPUs: batch norm statistics over the global batch (SyncBatchNorm)
    dist_timeout: Positive = 300.0  # torchrun: seconds a process waits for the others before the run fails
    unlabelled_ratio: Count = 3  # semi-supervised (data.unlabelled): unlabelled images per labelled one in each
    # step (FixMatch's mu; 7 in the paper, on GPUs)
    pseudo_threshold: Share = 0.95  # an unlabelled image trains only if the model gives its weakly augmented
    # version this probability or more; its top class is then the target for a strongly augmented version
    unlabelled_weight: NonNegative = 1.0  # weight of the unlabelled loss next to the labelled one (lambda_u)
    outlier_exposure: NonNegative = 0.0  # > 0: each step also trains on a quarter batch of made-up images (noise,
    # flat colours, patch-shuffled images) towards equal probabilities for every class, with this weight (0.5 in
    # Hendrycks et al. 2019): unknown inputs become easier to tell apart, at about a quarter more compute
    seed: int = 0  # weights, data order and augmentation
    open_set: Literal["combined", "knn", "energy", "mahalanobis", "msp", "off"] = "combined"  # unknown-input
    # detection fitted at the end of training: the score that answers unknown in imgclf predict/serve --unknown
    # (energy, msp: from the logits; knn, mahalanobis: distance of the features to the training images';
    # combined: the largest of energy, knn and the feature norm, standardized), or off


@dataclass
class Config:
    name: FolderName | None = None  # run name (default: <model>-<dataset>-<time>)
    out: str = "runs"  # parent folder of run directories
    track: list[Tracker] = field(default_factory=list)  # experiment trackers to log into, e.g. [tensorboard, mlflow]:
    # event files in the run's tensorboard/ folder, a run in MLflow (pip install 'imgclf[track]')
    track_uri: str | None = None  # MLflow tracking URI, e.g. http://127.0.0.1:5000 (default: $MLFLOW_TRACKING_URI,
    # else MLflow's default, ./mlflow.db in MLflow 3)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def find_config(path: str | Path) -> Path:
    """A YAML recipe: the file `path` when it exists, else the packaged recipe of that name (folder, mnist-fast)."""
    path = Path(path)
    if path.is_file() or len(path.parts) != 1:
        return path
    name = path.name.removesuffix(".yaml")
    if (RECIPES / f"{name}.yaml").is_file():
        return RECIPES / f"{name}.yaml"
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    close = difflib.get_close_matches(name, names, n=1)
    raise ImgclfError(f"config {path} is neither a file nor a packaged recipe"
                      + (f"; did you mean {close[0]}?" if close else f"; the recipes are {', '.join(names)}."))


def load_config(path: str | Path | None = None, overrides: dict[str, object] | None = None) -> Config:
    """Defaults, updated by a YAML file (or packaged recipe), updated by {'train.lr': 0.01, ...}; checked against
    the dataclasses: their types, allowed values and ranges."""
    data: dict = {}
    if path is not None:
        data = _read_yaml(find_config(path))
    return _checked(_apply(data, overrides or {}))


def _read_yaml(path: Path) -> dict:
    """A YAML recipe's mapping, or one clear error for a file that cannot be read, is not UTF-8 or not YAML."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise ImgclfError(f"cannot read config {path}: {err.strerror or err}.") from err
    except UnicodeDecodeError as err:
        raise ImgclfError(f"config {path} is not UTF-8 text (byte {err.start}); save it as UTF-8 YAML.") from err
    except yaml.YAMLError as err:
        raise ImgclfError(f"config {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ImgclfError(f"config {path} must be a mapping of sections (data, model, train).")
    return data


def given_keys(path: str | Path | None, overrides: dict[str, object]) -> set[str]:
    """The dotted keys a YAML recipe and overrides set (what an automatic choice must not change)."""
    data = _read_yaml(find_config(path)) if path is not None else {}
    keys = {f"{section}.{key}" for section, values in data.items() if isinstance(values, dict) for key in values}
    return keys | set(overrides)


def with_overrides(config: Config, overrides: dict[str, object]) -> Config:
    """A copy of `config` with {'train.lr': 0.01, 'model.options.layers': 10, ...} applied, checked."""
    return _checked(_apply(config.to_dict(), overrides))


def absolute_paths(config: Config) -> Config:
    """`config` with its files and folders (folder dataset, data_dir, extra, unlabelled, weights, init) as absolute
    paths: a run's config.yaml then names the same data from whatever directory it is used."""
    def absolute(path: str | None) -> str | None:
        return None if path is None else os.path.abspath(os.path.expanduser(path))

    data, model = config.data, config.model
    dataset = f"folder:{absolute(data.dataset[7:])}" if data.dataset.startswith("folder:") else data.dataset
    return dataclasses.replace(
        config, data=dataclasses.replace(data, dataset=dataset, data_dir=absolute(data.data_dir),
                                         extra=absolute(data.extra), unlabelled=absolute(unlabelled_folder(data))),
        model=dataclasses.replace(model, weights=absolute(model.weights), init=absolute(model.init)))


def unlabelled_folder(data: DataConfig) -> str | None:
    """data.unlabelled as a plain folder path (folder:PATH or PATH), or None."""
    return None if data.unlabelled is None else data.unlabelled.removeprefix("folder:")


def _apply(data: dict, overrides: dict[str, object]) -> dict:
    """Set each dotted key in the nested mapping `data` (in place) and return it."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ImgclfError(f"cannot set {dotted}: {key} is not a section.")
        node[leaf] = value
    return data


def check_config(config: Config) -> None:
    """Refuse a config (one built in code too) with a value or a pair of values that load_config refuses."""
    _checked(config.to_dict())


def _checked(data: dict) -> Config:
    """The Config of the nested mapping `data`: every key known, of its type, within its values, and the keys
    that depend on each other agreeing."""
    config = _build(Config, data, "")
    data_cfg = config.data
    if data_cfg.test_fraction is not None and data_cfg.val_fraction + data_cfg.test_fraction >= 1:
        raise ImgclfError(f"data.val_fraction and data.test_fraction must leave training images (add up to less "
                          f"than 1), got {data_cfg.val_fraction} and {data_cfg.test_fraction}.")
    if data_cfg.folds is not None and data_cfg.fold >= data_cfg.folds:
        raise ImgclfError(f"data.fold must be in 0..folds-1 (0 to {data_cfg.folds - 1}), got {data_cfg.fold}.")
    return config


def _build(cls: type, data: dict, where: str):
    """Instantiate dataclass `cls` from `data`, recursing into nested dataclasses and checking each value."""
    if not isinstance(data, dict):
        raise ImgclfError(f"{where.rstrip('.') or 'the config'} must be a mapping, got {data!r}.")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = suggest(str(key), names)
            hint = f"; did you mean {where}{close}?" if close else f"; known: {', '.join(names)}"
            raise ImgclfError(f"unknown config key {where}{key}{hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}{key}.")
        else:
            kwargs[key] = _check(value, hint, f"{where}{key}")
    return cls(**kwargs)


def _check(value: object, hint: object, key: str) -> object:
    """`value` if it fits the annotation (an int is a fine float) and the values it allows, else a clear error
    (with the allowed value it was likely meant to be)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        base, *rules = typing.get_args(option) if typing.get_origin(option) is Annotated else (option,)
        if typing.get_origin(base) is list:  # each item checked against the item type
            if isinstance(value, list):
                return [_check(item, typing.get_args(base)[0], key) for item in value]
            continue
        converted = _convert(value, base)
        if converted is _MISMATCH:
            continue
        if typing.get_origin(base) is Literal:
            choices = typing.get_args(base)
            rules.append(Rule(lambda v, choices=choices: v in choices, f"one of {', '.join(map(str, choices))}",
                              tuple(map(str, choices))))
        for rule in rules:
            if not rule.test(converted):
                close = suggest(str(value).lower(), list(rule.names)) if rule.names else None
                raise ImgclfError(f"config key {key} must be {rule.words}, got {value!r}"
                                  + (f"; did you mean {close}?" if close else "."))
        return converted
    raise ImgclfError(f"config key {key} must be {' or '.join(map(_type_name, options))}, got {value!r}.")


_MISMATCH = object()  # what _convert returns for a value not of the type


def _convert(value: object, base: object) -> object:
    """`value` as the type `base` (an int is a fine float, a number a fine str), or _MISMATCH."""
    if typing.get_origin(base) is Literal:
        return _convert(value, type(typing.get_args(base)[0]))
    if base is type(None):
        return None if value is None else _MISMATCH
    if base is str and isinstance(value, bool):  # YAML 1.1 reads off and on (as in open_set: off) as booleans
        return "on" if value else "off"
    if isinstance(value, bool) and base is not bool:
        return _MISMATCH
    if base is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            return _MISMATCH
    if base is float and isinstance(value, int | float):
        return float(value)
    if base is str and isinstance(value, str | int):
        return str(value)
    origin = typing.get_origin(base) or base
    return value if origin in (int, bool, dict) and isinstance(value, origin) else _MISMATCH


def _type_name(option: object) -> str:
    """How an error names a type: float, null, one of fp32, bf16, fp16."""
    base = typing.get_args(option)[0] if typing.get_origin(option) is Annotated else option
    if typing.get_origin(base) is Literal:
        return f"one of {', '.join(map(str, typing.get_args(base)))}"
    if typing.get_origin(base) is list:
        item = typing.get_args(base)[0]
        example = typing.get_args(item)[0] if typing.get_origin(item) is Literal else _type_name(item)
        return f"a list such as [{example}]"
    return "null" if base is type(None) else getattr(base, "__name__", str(base))


def suggest(name: str, names: list[str]) -> str | None:
    """The one of `names` that `name` was likely meant to be: by spelling, or by initials (learning_rate: lr)."""
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        return close[0]
    initials = "".join(word[:1] for word in name.split("_"))
    return next((n for n in names if n == initials or "".join(w[:1] for w in n.split("_")) == name), None)


def config_keys(config: Config | None = None) -> list[tuple[str, object, object, str]]:
    """(dotted key, value in `config`, default, meaning) of every config key, in the order of the dataclasses."""
    meanings = _meanings()

    def rows(node: object, default: object, prefix: str):
        for f in dataclasses.fields(node):
            value, base = getattr(node, f.name), getattr(default, f.name)
            if dataclasses.is_dataclass(value):
                yield from rows(value, base, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}", value, base, meanings[type(node).__name__, f.name]

    return list(rows(config or Config(), Config(), ""))


def _meanings() -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comment beside the field in this file, with the comment lines under it."""
    source = Path(__file__).read_text()
    lines = source.splitlines()
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
    found = {}
    for node in ast.parse(source).body:
        for item in node.body if isinstance(node, ast.ClassDef) else []:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                line, parts = item.lineno, []
                while line in comments and (not parts or lines[line - 1].lstrip().startswith("#")):
                    parts.append(comments[line])
                    line += 1
                found[node.name, item.target.id] = " ".join(parts)
    return found
