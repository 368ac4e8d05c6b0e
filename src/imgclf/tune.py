"""`imgclf tune`: hyperparameter search with Optuna around `train`.

Every trial is an ordinary run directory (<out>/<name>/trial-NNNN/) selected on its validation split;
the study lives in SQLite (<out>/<name>/study.db) or any Optuna storage URL, so a stopped search resumes
and several processes (or machines) can share one study. The test split is scored once, for the best."""

from __future__ import annotations

import csv
import json
import logging
import math
import time
import warnings
from pathlib import Path

import torch
import yaml

from imgclf.config import Config, with_overrides
from imgclf.database import database_url, without_password
from imgclf.errors import ImgclfError, first_line
from imgclf.files import plain_name
from imgclf.rundir import atomic_write
from imgclf.tracking import study_tracker

log = logging.getLogger(__name__)

# The seed paper's Table III, on the configurable CNN: "layers" and "filter size" map onto its options.
PAPER_SPACE = {"model.name": "cnn", "train.optimizer": "adam", "train.schedule": "constant",
               "train.lr": [0.001, 0.01, 0.1], "train.batch_size": [32, 64, 128], "train.epochs": [10, 20, 30],
               "model.options.layers": [5, 10, 15], "model.options.kernel": [3, 5, 7]}
SPACES = {"auto": "learning rate, weight decay and batch size around the config's, and dropout where the model has "
                  "it (the default)",
          "paper": "the seed paper's Table III for MNIST: the cnn model, epochs 10-30, layers, kernel, lr, batch"}
SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("median", "hyperband", "none")


def load_space(source: str | Path) -> dict:
    """A search space: 'paper', or a YAML file of {dotted config key: spec}. A spec is a list (choices),
    {low, high[, log][, step]} (a range: int if low and high are ints, else float), or a fixed value.
    The 'auto' space depends on the config: model_space makes it."""
    if str(source) == "auto":
        raise ImgclfError("the auto search space is derived from a config: use model_space(config).")
    if str(source) == "paper":
        return dict(PAPER_SPACE)
    named = "; ".join(f"{name}: {about}" for name, about in SPACES.items())
    try:
        space = yaml.safe_load(Path(source).read_text())
    except OSError as err:
        raise ImgclfError(f"cannot read search space {source}: {err.strerror or err}; pass a YAML file of "
                          f"key: choices/ranges, or a named space ({named}).") from err
    except yaml.YAMLError as err:
        raise ImgclfError(f"search space {source} is not valid YAML: {err}") from err
    if not isinstance(space, dict) or not space:
        raise ImgclfError(f"search space {source} must map config keys to choices, e.g. train.lr: [0.001, 0.01].")
    for key, spec in space.items():
        if isinstance(spec, list) and not spec:
            raise ImgclfError(f"search space key {key} has an empty list of choices.")
        if isinstance(spec, dict) and not ({"low", "high"} <= spec.keys() <= {"low", "high", "log", "step"}
                                            and _number(spec["low"]) < _number(spec["high"])):
            raise ImgclfError(f"search space key {key}: a range needs low < high (and optionally log, step), "
                              f"got {spec}.")
    return space


def model_space(config: Config, train_images: int | None = None) -> dict:
    """The 'auto' space: around `config`, for its model. The learning rate from a tenth to three times its own,
    weight decay 1e-5 to 1e-2, the batch size (at most the largest power of two the `train_images` fill) or a
    half or a quarter of it, and dropout 0-0.5 where the model has that option. Never epochs: the config's stay."""
    from imgclf.models import model_options

    lr, batch = config.train.lr, config.train.batch_size
    if train_images:
        batch = min(batch, 2 ** int(math.log2(train_images)))
    space = {"train.lr": {"low": lr / 10, "high": lr * 3, "log": True},
             "train.weight_decay": {"low": 1e-5, "high": 1e-2, "log": True},
             "train.batch_size": sorted({max(1, batch // 4), max(1, batch // 2), batch})}
    if "dropout" in model_options(config.model.name):
        space["model.options.dropout"] = {"low": 0.0, "high": 0.5}
    return space


def without_given(space: dict, given: dict[str, object]) -> tuple[dict, list[str]]:
    """`space` less every key the user set in `given` ({dotted key: value}, e.g. the command line's): their values
    win. Also drops the space's model options when it names another model than the user's. Returns the space
    and a note for each key dropped whose value the space would have changed."""
    mine = _leaves(given)
    theirs = space.get("model.name")
    other_model = isinstance(theirs, str) and mine.get("model.name", theirs) != theirs
    kept, notes = {}, []
    for key, spec in space.items():
        clash = {k: v for k, v in mine.items() if k == key or k.startswith(f"{key}.") or key.startswith(f"{k}.")}
        if other_model and key.startswith("model.options"):
            notes.append(f"the space's {key} is not used: it is an option of {theirs}, and you chose "
                         f"{mine['model.name']}")
        elif not clash:
            kept[key] = spec
        elif isinstance(spec, list | dict) or clash != {key: spec}:
            notes.append(f"the space's {key} is not used: you set {', '.join(f'{k} {v}' for k, v in clash.items())}")
    if _searched(space) and not _searched(kept):
        raise ImgclfError(f"nothing left to search: you set every key the space searches "
                          f"({', '.join(_searched(space))}); remove those options or pass another --space.")
    return kept, notes


def _searched(space: dict) -> list[str]:
    return [key for key, spec in space.items() if isinstance(spec, list | dict)]


def _leaves(values: dict[str, object]) -> dict[str, object]:
    """{'model.options': {'layers': 2}} -> {'model.options.layers': 2}."""
    leaves: dict[str, object] = {}
    for key, value in values.items():
        leaves.update(_leaves({f"{key}.{k}": v for k, v in value.items()}) if isinstance(value, dict) and value
                      else {key: value})
    return leaves


def _number(value: object) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ImgclfError(f"range bounds must be numbers, got {value!r}.") from None


def _suggest(trial, key: str, spec: object) -> object:
    """The trial's value for one key of the space."""
    if isinstance(spec, list):
        return trial.suggest_categorical(key, spec)
    if isinstance(spec, dict):
        low, high = spec["low"], spec["high"]
        if isinstance(low, int) and isinstance(high, int):
            return trial.suggest_int(key, low, high, step=spec.get("step", 1), log=bool(spec.get("log")))
        return trial.suggest_float(key, float(low), float(high), log=bool(spec.get("log")), step=spec.get("step"))
    return spec  # a fixed value


def tune(config: Config, space: dict, *, sampler: str = "tpe", pruner: str = "median", trials: int | None = None,
         timeout: float | None = None, storage: str | None = None, study: str | None = None,
         seed: int | None = None, progress: bool = False) -> dict:
    """Run (or continue) a study of `trials` trials in total (default: the grid's size for grid, else 20).

    seed makes the sampler reproducible; leave it None when several workers share a study, or each would
    propose the same values."""
    try:
        import optuna
    except ImportError as err:
        raise ImgclfError("tuning needs Optuna: pip install 'imgclf[tune]'.") from err

    if sampler not in SAMPLERS or pruner not in PRUNERS:
        raise ImgclfError(f"--sampler must be one of {', '.join(SAMPLERS)} and --pruner one of "
                          f"{', '.join(PRUNERS)}; got {sampler} and {pruner}.")
    if not config.data.val_fraction and config.data.folds is None:
        raise ImgclfError("tuning selects on the validation split; set data.val_fraction above 0 (e.g. 0.1).")
    check_space(config, space)
    searched = {k: space[k] for k in _searched(space)}
    fixed = {k: v for k, v in space.items() if k not in searched}
    name = study or config.name or f"tune-{fixed.get('model.name', config.model.name)}"
    folder = Path(config.out) / plain_name(name, "--study")
    folder.mkdir(parents=True, exist_ok=True)
    if sampler == "grid" and any(isinstance(v, dict) for v in searched.values()):
        raise ImgclfError("the grid sampler needs a list of values for every searched key, not ranges.")
    grid = math.prod(len(v) for v in searched.values()) if sampler == "grid" else None
    total = trials or grid or 20
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are logged here, one line each
    direction = "minimize" if config.train.monitor == "val_loss" else "maximize"
    study_obj = optuna.create_study(
        study_name=folder.name, storage=_storage(storage, folder), load_if_exists=True, direction=direction,
        sampler=_sampler(optuna, sampler, searched, seed), pruner=_pruner(optuna, pruner, config, space))
    _same_study(study_obj, config, space, folder)
    with study_tracker(config, folder.name, study_obj.user_attrs.get("mlflow_run_id")) as parent:
        if parent.run_id:  # trials tracked into MLflow nest under the study's run, in every session
            study_obj.set_user_attr("mlflow_run_id", parent.run_id)
        done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        remaining = total - len(study_obj.get_trials(deepcopy=False, states=done))
        if remaining <= 0:
            log.info("study %s already has %d finished trial(s): nothing to run", folder.name, total - remaining)
        else:
            log.info("study %s: %d trial(s) to run (%d done), %s sampler, %s pruner", folder.name, remaining,
                     total - remaining, sampler, pruner)
            training_log = logging.getLogger("imgclf.training")
            level = training_log.level
            if not log.isEnabledFor(logging.DEBUG):
                training_log.setLevel(logging.WARNING)  # one line per trial, not one per epoch (-v shows them)
            try:
                study_obj.optimize(_objective(config, searched, fixed, folder, progress), n_trials=remaining,
                                   timeout=timeout, catch=(ImgclfError, torch.cuda.OutOfMemoryError),
                                   callbacks=[optuna.study.MaxTrialsCallback(total, states=done), _report])
            finally:
                training_log.setLevel(level)
        result = _write_results(study_obj, config, searched, fixed, folder)
        parent.scalars(0, {f"best/{config.train.monitor}": result["best"]["value"]})
    return result


def check_space(config: Config, space: dict) -> None:
    """Every choice and range bound of `space` makes a valid trial config with `config` (so a typo fails now, not
    in every trial); reads no data."""
    from imgclf.training.loop import check_settings

    searched = {k: space[k] for k in _searched(space)}
    fixed = {k: v for k, v in space.items() if k not in searched}
    check_settings(with_overrides(config, fixed))
    for key, spec in searched.items():
        values = spec if isinstance(spec, list) else [spec["low"], spec["high"]]
        for value in values:
            check_settings(with_overrides(config, {**fixed, key: value}))
        if isinstance(spec, dict) and spec.get("log") and _number(spec["low"]) <= 0:
            raise ImgclfError(f"search space key {key}: a log range needs low > 0, got {spec['low']}.")
        if isinstance(spec, dict) and spec.get("log") and spec.get("step"):
            raise ImgclfError(f"search space key {key}: a range is either log or stepped, not both.")


def _same_study(study, config: Config, space: dict, folder: Path) -> None:
    """A resumed study must be the same search: same space, metric, dataset and base model."""
    identity = {"space": json.loads(json.dumps(space)), "monitor": config.train.monitor,
                "dataset": config.data.dataset, "model": config.model.name}
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", identity)
    elif stored != identity:
        changed = ", ".join(k for k in identity if stored.get(k) != identity[k])
        raise ImgclfError(f"study {folder.name} in this storage was started with a different {changed}; use "
                          "another --study name (or --out) for a new search.")


def _storage(url: str | None, folder: Path):
    """SQLite in the study folder by default; heartbeats let a later run retry trials a killed process left.
    Workers starting together may race to create the tables: the loser retries and finds them."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental in Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    database_url(url) if url else f"sqlite:///{folder.resolve() / 'study.db'}",
                    heartbeat_interval=30, grace_period=90,
                    engine_kwargs={"connect_args": {"timeout": 60}} if not url else None,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
        except ImportError as err:  # e.g. postgresql:// without its driver
            raise ImgclfError(f"the storage {without_password(url)} needs a database driver that is not installed "
                              f"({err}); pip install 'imgclf[postgres]' for PostgreSQL, or use the default "
                              "SQLite.") from err
        except SQLAlchemyError as err:
            if attempt == 2:
                raise ImgclfError(f"cannot open the study storage: {first_line(err)}") from err
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def _sampler(optuna, name: str, searched: dict, seed: int):
    if name == "grid":
        return optuna.samplers.GridSampler(searched, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)


def _pruner(optuna, name: str, config: Config, space: dict):
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        epochs = space.get("train.epochs", config.train.epochs)  # the most any trial may train
        most = max(epochs) if isinstance(epochs, list) else epochs["high"] if isinstance(epochs, dict) else epochs
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, math.ceil(most)))
    return optuna.pruners.NopPruner()


def _objective(config: Config, searched: dict, fixed: dict, folder: Path, progress: bool):
    """Train one trial's config into its own run directory, reporting validation after every epoch."""
    import optuna

    from imgclf.training import StopReason, train

    def objective(trial) -> float:
        params = {key: _suggest(trial, key, spec) for key, spec in searched.items()}
        trial_config = with_overrides(config, {**fixed, **params, "out": str(folder),
                                               "name": f"trial-{trial.number:04d}"})
        trial.set_user_attr("run", str(folder / f"trial-{trial.number:04d}"))
        metric = config.train.monitor

        def report(row: dict) -> bool:
            trial.report(row[metric], step=math.ceil(row["epoch"]))
            return trial.should_prune()

        started = time.monotonic()
        try:
            run = train(trial_config, progress=progress, on_epoch=report, test=False)
        except (ImgclfError, torch.cuda.OutOfMemoryError) as err:
            trial.set_user_attr("error", first_line(err))
            raise
        finally:
            trial.set_user_attr("seconds", round(time.monotonic() - started, 2))
        if run.summary.stopped is StopReason.INTERRUPTED:  # Ctrl-C or SIGTERM: stop the search, not this trial
            raise KeyboardInterrupt
        if run.summary.stopped is StopReason.PRUNED:
            raise optuna.TrialPruned(f"pruned at epoch {run.history[-1]['epoch']}")
        return run.summary.best.value

    return objective


def _report(study, trial) -> None:
    """One log line per finished trial, with the best so far (or why it failed)."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    best = study.best_trial if complete else None
    if trial.state.name == "FAIL":
        log.warning("trial %d failed: %s %s", trial.number, trial.user_attrs.get("error", "see -v"), trial.params)
        return
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    log.info("trial %d %s: %s (%.1fs) %s | best %s (trial %d)", trial.number, trial.state.name.lower(), value,
             trial.user_attrs.get("seconds", 0), trial.params,
             f"{best.value:.4f}" if best else "-", best.number if best else -1)


def _write_results(study, config: Config, searched: dict, fixed: dict, folder: Path) -> dict:
    """trials.csv, best.yaml, plots, the Table III-style summary and the best trial's test accuracy."""
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    _write_trials(folder / "trials.csv", study.trials, list(searched))
    complete = [t for t in finished if t.state.name == "COMPLETE"]
    if not complete:
        errors = {t.user_attrs["error"] for t in study.trials if "error" in t.user_attrs}
        raise ImgclfError(f"no trial of {folder} completed (all failed or were pruned)"
                          + (f"; errors: {'; '.join(sorted(errors))[:500]}" if errors else "") + ".")
    best = study.best_trial
    best_config = with_overrides(config, {**fixed, **best.params, "name": None, "out": config.out})
    atomic_write(folder / "best.yaml", lambda tmp: best_config.save(tmp))
    table = [{"parameter": key, "best": best.params.get(key),
              "values tested": sorted({t.params[key] for t in finished if key in t.params}, key=_order)}
             for key in searched]
    failed = sum(t.state.name == "FAIL" for t in study.trials)
    result = {"study": str(folder), "trials": len(finished), "complete": len(complete), "failed": failed,
              "pruned": len(finished) - len(complete), "best": {"trial": best.number, "value": best.value,
                                                                 "metric": config.train.monitor,
                                                                 "params": best.params, "run": best.user_attrs["run"]},
              "table": table, "train_seconds": round(sum(t.user_attrs.get("seconds", 0) for t in finished), 1),
              "test": _test_best(best.user_attrs["run"]) if Path(best.user_attrs["run"]).is_dir() else None,
              "plots": _plots(study, folder)}
    atomic_write(folder / "tune.json", lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    return result


def _order(value: object) -> tuple:
    """Sort key for tested values: numbers in order, then anything else (null, names) by its text."""
    number = isinstance(value, int | float)
    return (not number, value if number else repr(value))


def _write_trials(path: Path, trials: list, keys: list[str]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["trial", "state", "value", *keys, "seconds", "epochs_reported", "run"])
            for t in trials:
                writer.writerow([t.number, t.state.name.lower(), t.value, *(t.params.get(k) for k in keys),
                                 t.user_attrs.get("seconds"), len(t.intermediate_values), t.user_attrs.get("run")])
    atomic_write(path, write)


def _test_best(run: str) -> dict:
    """The best trial's saved model on the test split: the one time the search touches the test set
    (`imgclf evaluate` on that run gives the full report)."""
    from imgclf.device import pick_device
    from imgclf.evaluate.evaluation import eval_data
    from imgclf.evaluate.stats import scores
    from imgclf.predict import predict_logits
    from imgclf.rundir import load_model, preprocess_of

    model, meta = load_model(run)
    data, device = eval_data(Path(run), meta), pick_device("auto")
    predicted = predict_logits(model.to(device), data.split, preprocess_of(meta), device).argmax(axis=1)
    result = scores(data.targets, predicted, len(meta["classes"]))
    return {"accuracy": result["accuracy"], "macro_f1": result["macro_f1"], "accuracy_ci": result["ci"]["accuracy"]}


def _plots(study, folder: Path) -> list[str]:
    """Optimization history, parameter importances and parallel coordinates as PNGs (where they apply)."""
    from imgclf.evaluate.plots import optuna_plots

    return [str(p) for p in optuna_plots(study, folder)]
