"""The training loop behind `imgclf train`: it writes the run directory as it goes and resumes exactly."""

from __future__ import annotations

import csv
import json
import logging
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from imgclf import openset
from imgclf.attacks import pgd
from imgclf.config import Config, absolute_paths, check_config, load_config, with_overrides
from imgclf.data import FileSplit, Split, batches, images_at, membership, synthetic_outliers
from imgclf.device import pick_device
from imgclf.errors import ImgclfError, first_line
from imgclf.evaluate import metrics
from imgclf.models import model_entry
from imgclf.predict import predict_logits
from imgclf.rundir import atomic_write, load_model, save_model, update_meta
from imgclf.tracking import OFF, check_trackers, open_tracker
from imgclf.training.distributed import SINGLE, Group, join, leave, lost
from imgclf.training.parts import build_parts
from imgclf.training.recipe import resolve
from imgclf.training.summary import Best, RunSummary, StopReason

log = logging.getLogger(__name__)
# settings a resumed run may change: where the data is and how it is read, and when to stop
_RESUMABLE = {"data": {"data_dir", "num_workers"},
              "train": {"epochs", "time", "early_stop", "device", "dist_timeout"}}
# why a session ends before its last step, None for none, least urgent first (Group.most_urgent agrees on one)
_STOPS = (None, StopReason.MAX_STEPS, StopReason.TIME, StopReason.INTERRUPTED)


class TrainingError(ImgclfError):
    """Training cannot go on (a non-finite loss, a mismatched resume)."""


class LostProcess(TrainingError):
    """Another process of a distributed run died, hung or became unreachable."""


@dataclass
class Run:
    """What `train` returns: the run directory, its config, one row per epoch, and the summary."""

    path: Path
    config: Config
    history: list[dict]
    summary: RunSummary


def train(config: Config | None = None, resume: str | Path | None = None, *, progress: bool = True,
          max_steps: int | None = None, on_epoch: Callable[[dict], bool] | None = None, test: bool = True) -> Run:
    """Train per `config` into a new run directory, or continue the run in `resume` exactly.

    max_steps ends this call cleanly after that many optimizer steps, as the time budget does (resumable).
    on_epoch(row) sees every epoch's metrics row and may return True to stop the run there (StopReason.PRUNED).
    test=False leaves the test split alone (hyperparameter search selects on validation only)."""
    started = time.monotonic()
    if resume is not None:
        config = _resume_config(Path(resume), config)
    else:  # the recipe chosen from the data for model.name auto; random weights never frozen
        check_settings(config or Config())
        plan = resolve(absolute_paths(config or Config()))  # the run's files are found from anywhere
        config = plan.config
        for note in plan.notes:
            log.info("%s", note)
    check_settings(config)
    group = join(pick_device(config.train.device), config.train.dist_timeout)  # under torchrun: all processes
    folder = Path(resume) if resume is not None else None
    try:
        folder = folder or group.agree(lambda: _new_folder(config))
        # fails on bad settings before anything is written
        trainer = Trainer(config, folder, progress and group.main, on_epoch, test, group=group)
        if resume is not None:
            trainer.restore()
        else:
            if group.main:
                folder.mkdir(parents=True)
                config.save(folder / "config.yaml")
                trainer.save_membership()
            trainer.checkpoint()  # step 0: the run can be resumed (or inspected) whatever happens next
        return trainer.fit(started, max_steps)
    except RuntimeError as err:
        if not (group.active and lost(err)):
            raise
        saved = (f"The last checkpoint is in {folder}: continue with `torchrun ... -m imgclf train --resume "
                 f"{folder}`." if folder else "Nothing was saved yet.")
        raise LostProcess(f"process {group.rank} of {group.world} lost the other processes of this run "
                          f"({first_line(err)}); one of them failed or stopped, see its own "
                          f"error. {saved}") from err
    finally:
        leave(group)


def parse_duration(text: str) -> float:
    """'90s', '5m', '1.5h' or a plain number of seconds -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text or "")
    if not match:
        raise ImgclfError(f"time budget {text!r} is not a duration; write it like 90s, 5m or 1.5h.")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def _new_folder(config: Config) -> Path:
    name = config.name or (f"{config.model.name}-{config.data.dataset.replace('folder:', '').strip('/').split('/')[-1]}"
                           f"-{datetime.now():%Y%m%d-%H%M%S}")
    folder = Path(config.out) / name
    if folder.exists():
        raise ImgclfError(f"run directory {folder} already exists; continue it with --resume {folder}, "
                          "or choose another --name.")
    return folder


def _resume_config(folder: Path, given: Config | None) -> Config:
    """The run's saved config; a given config may change only the settings in _RESUMABLE."""
    if not (folder / "config.yaml").is_file() or not (folder / "state.pt").is_file():
        raise ImgclfError(f"{folder} is not a resumable run directory (config.yaml and state.pt are missing).")
    saved = absolute_paths(load_config(folder / "config.yaml"))
    if given is None:
        return saved
    given = absolute_paths(given)
    old, new = saved.to_dict(), given.to_dict()
    changed = [f"{section}.{key}" for section in ("data", "model", "train") for key in old[section]
               if old[section][key] != new[section][key] and key not in _RESUMABLE.get(section, ())]
    if old["train"]["epochs"] != new["train"]["epochs"] and saved.train.schedule in ("onecycle", "cosine"):
        changed.append("train.epochs (the onecycle and cosine schedules are planned over the whole run)")
    if changed:
        raise TrainingError(f"cannot resume {folder} with a different {', '.join(changed)}; resuming must keep "
                            "the data, model and training settings (only "
                            + ", ".join(f"{s}.{k}" for s, keys in _RESUMABLE.items() for k in sorted(keys))
                            + " may change). Start a new run instead.")
    if given.data.data_dir and given.data.dataset.startswith("folder:"):  # the run's image folder, moved
        given = with_overrides(given, {"data.dataset": f"folder:{given.data.data_dir}"})
    return given


def _ema_with_warmup(decay: float):
    """EMA update whose decay grows as min(decay, (1 + n) / (10 + n)) over the first steps, so that a
    short run does not average in its random initialization."""
    def update(average: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1 + float(n)) / (10 + float(n)))
        return average * d + current * (1 - d)
    return update


def check_settings(config: Config) -> None:
    """The config's values (config.py's rules), its model and its time budget, before anything is loaded or
    written."""
    check_config(config)
    check_trackers(config.track)
    if config.model.name != "auto":
        model_entry(config.model.name)
    if config.train.time is not None and parse_duration(config.train.time) <= 0:
        raise ImgclfError(f"train.time must be a positive duration such as 5m, got {config.train.time!r}.")


class Trainer:
    """The loop of one run and its resumable state, around the parts it trains (built by `build_parts`)."""

    def __init__(self, config: Config, folder: Path, progress: bool,
                 on_epoch: Callable[[dict], bool] | None = None, test: bool = True, *, group: Group = SINGLE) -> None:
        self.config, self.folder, self.progress, self.on_epoch, self.test = config, folder, progress, on_epoch, test
        cfg, self.group = config.train, group
        check_settings(config)
        self.parts = build_parts(config, group, fresh=not (folder / "state.pt").is_file())  # resumed: state.pt
        self.budget = parse_duration(cfg.time) if cfg.time else None
        model = self.parts.model
        self.ema = AveragedModel(model, avg_fn=_ema_with_warmup(cfg.ema), use_buffers=True) if cfg.ema else None
        self.local_batch = cfg.batch_size // group.world  # this process's share of each global batch
        # resumable state
        self.epoch, self.batch, self.step, self.skipped, self.bad_epochs, self.elapsed = 0, 0, 0, 0, 0, 0.0
        self.session_start = time.monotonic()  # elapsed counts training time over all sessions of the run
        self.aug_rng = torch.Generator().manual_seed(cfg.seed + 1 + 7919 * group.rank)
        self.net, self.trainable = model, None  # the model as the forward pass sees it (DDP under torchrun)
        self.partial = self._fresh_partial()
        self.history: list[dict] = []
        self.best: dict = {}
        # (features, logits) of the latest validation pass and of the saved epoch's (for unknown-input detection)
        self.last_val: tuple[torch.Tensor, torch.Tensor] | None = None
        self.best_val: tuple[torch.Tensor, torch.Tensor] | None = None
        self.tracker = OFF  # open while fit runs, on rank 0

    def _fresh_partial(self) -> dict:
        """The epoch's running sums: loss, right answers, images; with unlabelled data, also how many unlabelled
        images were drawn and how many of them were confident enough to train on."""
        sums = {"loss": 0.0, "correct": 0, "count": 0}
        return {**sums, "unlabelled": 0, "pseudo": 0} if self.parts.unlabelled is not None else sums

    def save_membership(self) -> None:
        """data.json: which files each split holds, to evaluate the run anywhere (image folders only)."""
        if self.config.data.dataset.startswith("folder:") and isinstance(self.parts.files["train"], FileSplit):
            found = membership.record(Path(self.config.data.dataset[7:]), self.parts.dataset.classes, self.parts.files)
            atomic_write(self.folder / membership.FILE, lambda tmp: tmp.write_text(json.dumps(found) + "\n"))

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.parts.model.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
                "optimizer": self.parts.optimizer.state_dict(), "schedule": self.parts.schedule.state_dict(),
                "scaler": self.parts.scaler.state_dict(), "epoch": self.epoch, "batch": self.batch, "step": self.step,
                "skipped": self.skipped, "bad_epochs": self.bad_epochs, "elapsed": self.elapsed_now(),
                **self._rng_state(), "partial": dict(self.partial), "history": self.history, "best": self.best}

    def _rng_state(self) -> dict:
        return {"aug_rng": self.aug_rng.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.parts.device.type == "cuda" else []}

    def restore(self) -> None:
        """Load state.pt (weights_only: plain tensors and numbers) and carry on from it."""
        path = self.folder / "state.pt"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)  # RNG states must stay on the CPU
        except Exception as err:  # a truncated or damaged file: say so, never start over silently
            raise TrainingError(f"{path} is damaged and cannot be resumed ({first_line(err)}). The "
                                f"best model so far is still in {self.folder / 'model.safetensors'}; start a new "
                                "run to train further.") from err
        self.parts.model.load_state_dict(state["model"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        self.parts.optimizer.load_state_dict(state["optimizer"])
        self.parts.schedule.load_state_dict(state["schedule"])
        self.parts.scaler.load_state_dict(state["scaler"])
        for key in ("epoch", "batch", "step", "skipped", "bad_epochs", "elapsed", "partial", "history", "best"):
            setattr(self, key, state[key])
        ranks = [state, *state.get("other_ranks", [])]  # random streams: rank 0's, then one per other process
        if len(ranks) != self.group.world:
            log.warning("%s was saved by %d process(es) and resumes with %d: the random streams (augmentation, "
                        "dropout) of the others start afresh, so this is not a bit-exact resume",
                        self.folder, len(ranks), self.group.world)
        if self.group.rank < len(ranks):
            rng = ranks[self.group.rank]
            self.aug_rng.set_state(rng["aug_rng"])
            torch.set_rng_state(rng["torch_rng"])
            if self.parts.device.type == "cuda" and rng["cuda_rng"]:
                torch.cuda.set_rng_state_all(rng["cuda_rng"])
        log.info("resuming %s at epoch %d, step %d", self.folder, self.epoch + 1, self.step)

    def checkpoint(self) -> None:
        """state.pt, written by rank 0 with every process's random streams (all processes call this)."""
        others = self.group.gather(self._rng_state())[1:]
        if self.group.main:
            atomic_write(self.folder / "state.pt",
                         lambda tmp: torch.save({**self.state_dict(), "other_ranks": others}, tmp))

    # -- loop ---------------------------------------------------------------------------------------
    def fit(self, started: float, max_steps: int | None) -> Run:
        ok = False
        try:
            self._open_tracker()
            run = self._fit(started, max_steps)
            ok = True
            return run
        finally:
            self.tracker.close(ok)
            self.tracker = OFF

    def _open_tracker(self) -> None:
        """Rank 0 logs into the trackers the config names; a new run starts with its settings and model graph, a
        resumed one continues its MLflow run (summary.json has its id)."""
        if not self.group.main:
            return
        before = RunSummary.read(self.folder) if self.step else None
        self.tracker = open_tracker(self.config, self.folder, self.step + 1 if self.step else None,
                                    before.mlflow_run_id if before else None)
        if not self.step:
            pre = self.parts.preprocess
            self.tracker.start(self.config, self.parts.model,
                               torch.zeros(1, pre.channels, *pre.size, device=self.parts.device))

    def _fit(self, started: float, max_steps: int | None) -> Run:
        cfg, steps_at_start, stop = self.config.train, self.step, None
        self.session_start = time.monotonic()
        previous = self._catch_signals()
        try:
            while self.step < self.parts.total_steps and not stop:
                # transfer learning: only the head for the first freeze_epochs, then the configured freeze
                frozen = cfg.freeze_epochs and self.epoch < cfg.freeze_epochs
                self.parts.model.freeze("backbone" if frozen else self.config.model.freeze)
                trainable = [p.requires_grad for p in self.parts.model.parameters()]
                if trainable != self.trainable:  # DDP synchronizes the parameters that train when it is built
                    self.net, self.trainable = self.group.wrap(self.parts.model, self.parts.device), trainable
                order = torch.randperm(len(self.parts.train_split),
                                       generator=torch.Generator().manual_seed(cfg.seed * 100_003 + self.epoch))
                order = self.group.shard(order[self.batch * cfg.batch_size:], cfg.batch_size)
                stop = self._train_epoch(order, steps_at_start, max_steps)
                if not stop or self.batch == self.parts.steps_per_epoch:
                    stop = self._end_epoch() or stop
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside the step loop
            stop = StopReason.INTERRUPTED
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if stop and self.batch:
            self._stop_mid_epoch(stop)
        self.elapsed, self.session_start = self.elapsed_now(), time.monotonic()
        return self._finish(stop, started)

    def _catch_signals(self) -> dict:
        """Ctrl-C and SIGTERM end the run after the current step (a second one stops at once)."""
        self.interrupted = False
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handle(signum: int, frame: object) -> None:
            if self.interrupted and not self.group.active:  # processes of a run must stop together, at a step
                raise KeyboardInterrupt
            self.interrupted = True
            log.warning("stopping after this step, keeping a checkpoint (signal again to stop at once)")

        return {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}

    def elapsed_now(self) -> float:
        return self.elapsed + time.monotonic() - self.session_start

    def _train_epoch(self, order: torch.Tensor, steps_at_start: int, max_steps: int | None) -> StopReason | None:
        """Steps over `order` until the epoch, the step count or a budget ends; returns why it stopped early."""
        self.parts.model.train()
        remaining = min(len(order) // self.local_batch, self.parts.total_steps - self.step)
        bar = tqdm(total=remaining, desc=f"epoch {self.epoch + 1}", unit="step", leave=False,
                   disable=not self.progress)
        parts = self.parts
        stream = batches(parts.train_split, parts.preprocess, self.local_batch, order=order, augment=parts.augment,
                         generator=self.aug_rng, device=parts.device, num_workers=self.config.data.num_workers,
                         drop_last=True)
        with bar:
            for x, y in stream:
                self._step(x, y)
                bar.update()
                bar.set_postfix(loss=f"{self.partial['loss'] / max(1, self.partial['count']):.4f}", refresh=False)
                if self.step >= self.parts.total_steps:
                    break
                reason = (StopReason.INTERRUPTED if self.interrupted else
                          StopReason.TIME if self.budget and time.monotonic() - self.session_start >= self.budget else
                          StopReason.MAX_STEPS if max_steps is not None and self.step - steps_at_start >= max_steps
                          else None)
                reason = self.group.most_urgent(_STOPS, reason, self.parts.device)  # all processes stop at one step
                if reason:
                    return reason
        return None

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        cfg, parts = self.config.train, self.parts
        if cfg.adversarial != "none":
            x = self._adversarial(x, y)
        # skipping a bad batch must also undo what its forward pass did to batch norm statistics
        buffers = [b.clone() for b in parts.model.buffers()] if cfg.nonfinite == "skip" else []
        unlabelled = self._unlabelled_batch() if parts.unlabelled is not None else None
        outliers = None
        if cfg.outlier_exposure:  # a quarter of a batch of made-up images of no class, from aug_rng (resumable)
            made = synthetic_outliers(parts.preprocess.denormalize(x), max(1, len(x) // 4), self.aug_rng)
            outliers = parts.preprocess.normalize(made)
        logits, loss = parts.batch_loss(self.net, x, y, unlabelled, outliers)
        finite = bool(torch.isfinite(loss))
        drawn, kept = (len(unlabelled[2]), float(unlabelled[2].sum())) if unlabelled is not None else (0, 0.0)
        # summed over the processes: every one skips a step if any has a non-finite loss
        loss_sum, correct, count, bad, drawn, kept = self.group.sum(
            [loss.item() * len(y) if finite else 0.0, float((logits.argmax(1) == y).sum()), len(y), not finite,
             drawn, kept], parts.device)
        if bad:
            self._nonfinite(loss.item() if not finite else "non-finite in another process")
            with torch.no_grad():
                for saved, buffer in zip(buffers, parts.model.buffers(), strict=True):
                    buffer.copy_(saved)
        else:
            self.tracker.scalars(self.step + 1, {"step/loss": loss_sum / count,
                                                 "step/lr": parts.optimizer.param_groups[-1]["lr"]})
            parts.update(loss)
            if self.ema:
                self.ema.update_parameters(parts.model)
            self.partial["loss"] += loss_sum
            self.partial["correct"] += int(correct)
            self.partial["count"] += int(count)
            if unlabelled is not None:
                self.partial["unlabelled"] += int(drawn)
                self.partial["pseudo"] += int(kept)
            if parts.per_step:
                parts.schedule.step()
        self.step += 1
        self.batch += 1

    def _unlabelled_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This step's unlabelled images, strongly augmented, with the pseudo-labels and mask of their weakly
        augmented versions (Parts.pseudo_labels). Which images is a function of the seed, step and process, and
        the augmentations draw from aug_rng, so a resumed run draws exactly what the uninterrupted one did."""
        cfg, parts = self.config.train, self.parts
        count = min(self.local_batch * cfg.unlabelled_ratio, len(parts.unlabelled))
        pick = torch.Generator().manual_seed(hash((cfg.seed, self.group.rank, self.step)) % 2**63)
        order = torch.randperm(len(parts.unlabelled), generator=pick)
        images = images_at(parts.unlabelled, parts.preprocess, order[:count], parts.device)  # (mu B, C, H, W), [0, 1]
        weak = parts.preprocess.normalize(parts.augment(images, self.aug_rng))
        strong = parts.preprocess.normalize(parts.strong(images, self.aug_rng))
        return (strong, *parts.pseudo_labels(weak))

    def _adversarial(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch attacked within train.eps of its pixels (adversarial training, Madry et al. 2018): the attack
        runs with the model in eval mode, so it does not move batch norm statistics. fgsm trains as Wong et
        al. 2020 do: one step of 1.25 eps from a random start, which plain FGSM training lacks (it overfits
        to its own attack)."""
        cfg, pre = self.config.train, self.parts.preprocess
        steps, size = (1, 1.25 * cfg.eps) if cfg.adversarial == "fgsm" else (cfg.attack_steps, None)
        self.parts.model.eval()
        try:
            adv = pgd(lambda p: self.parts.model(pre.normalize(p)), pre.denormalize(x), y, cfg.eps, steps=steps,
                      step_size=size, generator=self.aug_rng)
        finally:
            self.parts.model.train()
        return pre.normalize(adv)

    def _nonfinite(self, loss: float | str) -> None:
        where = f"epoch {self.epoch + 1}, step {self.step + 1} (lr {self.parts.optimizer.param_groups[0]['lr']:.3g})"
        if self.config.train.nonfinite == "skip" and self.skipped < 100:
            self.skipped += 1
            log.warning("loss is %s at %s; step skipped", loss, where)
            return
        skipped = f" after {self.skipped} skipped steps" if self.skipped else ""
        raise TrainingError(f"the loss became {loss} at {where}{skipped}. Lower the learning rate (train.lr), "
                            "or clip gradients (train.clip 1.0). Nothing from this step was saved; the last "
                            f"good checkpoint stays in {self.folder}.")

    def _end_epoch(self) -> StopReason | None:
        """Validate, log a row, keep the best weights, checkpoint; returns a reason to stop, if any."""
        cfg = self.config.train
        complete = self.batch == self.parts.steps_per_epoch  # else the run's last, fractional epoch
        row = {"epoch": self.epoch + 1 if complete else round(self.epoch + self.batch / self.parts.steps_per_epoch, 4),
               "step": self.step,
               "train_loss": self.partial["loss"] / max(1, self.partial["count"]),
               "train_acc": self.partial["correct"] / max(1, self.partial["count"]),
               **({"pseudo_rate": self.partial["pseudo"] / max(1, self.partial["unlabelled"])}
                  if self.parts.unlabelled is not None else {}),
               **self.validate(), "lr": self.parts.optimizer.param_groups[-1]["lr"],
               "seconds": round(self.elapsed_now(), 2)}
        self.history.append(row)
        self.tracker.scalars(row["step"], {f"epoch/{key}": value for key, value in row.items()
                                           if key not in ("epoch", "step", "seconds")})
        if complete:  # a fractional epoch keeps its place, so a longer resumed run finishes that same epoch
            self.epoch, self.batch, self.partial = self.epoch + 1, 0, self._fresh_partial()
        if not self.parts.per_step:
            self.parts.schedule.step(row.get(cfg.monitor, row["train_loss"]))
        improved = self._keep_if_best(row)
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        if self.group.main:
            self._write_metrics()
        self.checkpoint()
        values = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "step", "seconds"))
        log.info("epoch %g: %s  (%.1fs)", row["epoch"], values, row["seconds"])
        if cfg.early_stop and self.bad_epochs >= cfg.early_stop:
            return StopReason.EARLY_STOP
        if self.on_epoch is not None and self.on_epoch(row):
            return StopReason.PRUNED
        return None

    def validate(self) -> dict:
        """Loss and accuracy on the validation split (with the EMA weights when enabled)."""
        if self.parts.val_split is None:
            return {}
        self.group.same_buffers(self.parts.model, *([self.ema] if self.ema else []))
        parts, val = self.parts, self.parts.val_shard
        features, logits = openset.embed(self.ema.module if self.ema else parts.model, val, parts.preprocess,
                                         parts.device, num_workers=self.config.data.num_workers)
        self.last_val = (features, logits)  # fitting unknown-input detection reuses the saved epoch's
        loss = F.cross_entropy(logits, val.labels, reduction="sum").item()
        correct = float((logits.argmax(1) == val.labels).sum())
        loss, correct, count = self.group.sum([loss, correct, len(self.parts.val_shard)], self.parts.device)
        self.parts.model.train()
        return {"val_loss": loss / count, "val_acc": correct / count}

    def _logits(self, model: torch.nn.Module, split: Split) -> torch.Tensor:
        """(N, K) logits of `model` (put in eval mode) on `split`, on the CPU."""
        return torch.from_numpy(predict_logits(model, split, self.parts.preprocess, self.parts.device,
                                               num_workers=self.config.data.num_workers))

    def _keep_if_best(self, row: dict) -> bool:
        """Save model.safetensors when the monitored value improves (the latest weights without validation)."""
        key = self.config.train.monitor if self.parts.val_split is not None else "epoch"
        value = row[key]
        better = not self.best or (value < self.best["value"] if key == "val_loss" else value > self.best["value"])
        if better:
            self.best = {"value": value, "metric": key, "epoch": row["epoch"], "step": row["step"]}
            self.best_val = self.last_val
        if better and self.group.main:
            model = self.ema.module if self.ema else self.parts.model
            save_model(self.folder, model, self.parts.dataset.classes, self.parts.preprocess,
                       dataset=self.config.data.dataset, metrics={k: v for k, v in row.items()})
        return better

    def _write_metrics(self) -> None:
        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(self.history[0]))
                writer.writeheader()
                writer.writerows(self.history)
        atomic_write(self.folder / "metrics.csv", write)

    def _stop_mid_epoch(self, reason: StopReason) -> None:
        """A budget or Ctrl-C ended the run part-way: keep the weights if they are the best, and a checkpoint."""
        if self.partial["count"]:
            row = {"epoch": self.epoch + self.batch / self.parts.steps_per_epoch, "step": self.step, **self.validate()}
            self._keep_if_best(row)
        self.checkpoint()
        if self.group.main:
            log.warning("%s: stopped at epoch %.2f, step %d; continue with `imgclf train --resume %s`",
                        reason, self.epoch + self.batch / self.parts.steps_per_epoch, self.step, self.folder)

    def _finish(self, stop: StopReason | None, started: float) -> Run:
        stop = stop or StopReason.DONE
        # rank 0 tests the saved model, fits its unknown-input detection and writes the summary
        finished = (self.group.main and self.test and bool(self.best)
                    and stop not in (StopReason.INTERRUPTED, StopReason.PRUNED))
        model = load_model(self.folder) if finished else None
        tested = finished and "test" in self.parts.dataset.splits
        calibration, unknown = self._fit_after_training(*model) if finished else (None, None)
        summary = RunSummary(
            stopped=stop, epochs=self.step / self.parts.steps_per_epoch, steps=self.step, device=str(self.parts.device),
            threads=torch.get_num_threads(), processes=self.group.world, best=Best(**self.best) if self.best else None,
            train_seconds=round(self.elapsed, 2), process_seconds=round(time.monotonic() - started, 2),
            skipped_steps=self.skipped, train_images=len(self.parts.train_split),
            val_images=len(self.parts.val_split or ()), test_acc=self._test(model[0]) if tested else None,
            mlflow_run_id=self.tracker.run_id, calibration=calibration, unknown=unknown)
        if self.group.main:
            summary.save(self.folder / "summary.json")
            self.tracker.files([self.folder / name for name in ("model.json", "metrics.csv", "summary.json")
                                if (self.folder / name).is_file()])
        return Run(self.folder, self.config, self.history, summary)

    def _fit_after_training(self, model: torch.nn.Module, meta: dict) -> tuple[dict | None, dict | None]:
        """The saved model's calibration and unknown-input detection: the temperature fitted on the validation
        split goes into model.json (so predict, serve, evaluate and exports give calibrated probabilities), the
        detector into open_set.safetensors. Both are fitted once per weights: a finished run resumed keeps
        them. Returns what summary.json says of each (None: not fitted)."""
        parts, method, started = self.parts, self.config.train.open_set, time.monotonic()
        fitted = openset.load(self.folder, meta) if method != "off" and openset.fitted_for(self.folder, meta) else None
        if method != "off" and fitted is None:
            # one process validates on all of val: then the saved epoch's validation pass is reused
            reuse = self.best_val if self.group.world == 1 else None
            fitted = openset.fit(model.to(parts.device), parts.train_split, parts.val_split, parts.preprocess,
                                 parts.device, model_sha256=meta["sha256"], method=method, seed=self.config.train.seed,
                                 num_workers=self.config.data.num_workers, val_embedded=reuse)
            fitted.save(self.folder)
        unknown = ({"method": fitted.method, "check": fitted.check, "warning": fitted.warning,
                    "seconds": round(time.monotonic() - started, 2)} if fitted else None)
        if parts.val_split is None:
            log.warning("no validation split: the probabilities are not calibrated (a data.val_fraction above 0 "
                        "calibrates them at the end of training)")
            return None, unknown
        if "calibration" in meta:  # model.json is written afresh with new weights: these are calibrated
            return {"temperature": meta["temperature"], **meta["calibration"]}, unknown
        calibration = dict(fitted.calibration) if fitted else metrics.calibrate(
            self._logits(model.to(parts.device), parts.val_split).numpy(), parts.val_split.labels.numpy())
        temperature = calibration.pop("temperature")
        update_meta(self.folder, temperature=temperature,
                    calibration={**calibration, "fitted_on": "validation split, at the end of training"})
        log.info("probabilities calibrated on %d validation images: temperature %.3f, expected calibration error "
                 "%.4f before, %.4f after", calibration["samples"], temperature, calibration["val_ece_before"],
                 calibration["val_ece_after"])
        return {"temperature": temperature, **calibration}, unknown

    def _test(self, model: torch.nn.Module) -> float:
        """Accuracy of the saved (best) model on the test split: reported and tracked, never used for any choice."""
        test = self.parts.dataset.split("test")
        logits = self._logits(model.to(self.parts.device), test)
        self.tracker.test(self.step, logits, test, self.parts.dataset.classes, self.parts.preprocess)
        return float((logits.argmax(1) == test.labels).sum()) / len(test)
