"""What a run trains with, built once from its config: the data, the model, the optimizer, the schedule and
the loss; and the two things `Trainer` and `lr_find` both do with them, a batch's loss and one optimizer step."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from imgclf.config import Config, TrainConfig, unlabelled_folder
from imgclf.data import (
    Augment,
    Dataset,
    Preprocess,
    Split,
    augment_preset,
    default_preprocess,
    in_memory,
    load_dataset,
    load_unlabelled,
    strong_augment,
    train_val,
    with_extra,
)
from imgclf.device import pick_device
from imgclf.errors import ImgclfError, first_line
from imgclf.models import Classifier, create_model
from imgclf.models.summary import collapsed_note
from imgclf.rundir import load_model
from imgclf.training.distributed import SINGLE, Group
from imgclf.training.optim import make_optimizer, make_schedule

log = logging.getLogger(__name__)


@dataclass
class Parts:
    """One process's share of a run: its data splits, model, optimizer, schedule and loss settings."""

    settings: TrainConfig
    device: torch.device
    dataset: Dataset
    files: dict[str, Split | None]  # each split's files, before extra images join and before decoding
    train_split: Split
    val_split: Split | None
    val_shard: Split | None  # every world-th validation image, from this process's rank on
    preprocess: Preprocess
    augment: Augment
    model: Classifier
    steps_per_epoch: int
    total_steps: int
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    per_step: bool  # the schedule steps after every batch, else after every epoch with the monitored value
    loss_weights: torch.Tensor | None  # train.class_weights: inverse class frequencies
    scaler: torch.amp.GradScaler
    unlabelled: Split | None = None  # data.unlabelled's images (labels unused), for semi-supervised training
    strong: Augment | None = None  # their strong augmentation; the weak one is `augment`

    def batch_loss(self, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   unlabelled: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                   outliers: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, loss) of `net` on a labelled batch as training computes them: in train.precision, cross-entropy
        with label smoothing and class weights. With `unlabelled` (strongly augmented images, their pseudo-labels
        and a 0/1 mask, see pseudo_labels) the loss adds unlabelled_weight x their masked cross-entropy, averaged
        over all of them (FixMatch, Sohn et al. 2020). With `outliers` (normalized images of no class), it adds
        train.outlier_exposure x their cross-entropy to the uniform distribution (outlier exposure)."""
        cfg, n = self.settings, len(x)
        m = n + (len(unlabelled[0]) if unlabelled is not None else 0)
        # one forward pass: batch norm normalizes them all together, as in FixMatch and outlier exposure
        x = torch.cat([x, *([unlabelled[0]] if unlabelled is not None else []),
                       *([outliers] if outliers is not None else [])])
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            out = net(x)
            logits = out[:n]
            loss = F.cross_entropy(logits.float(), y, weight=self.loss_weights, label_smoothing=cfg.label_smoothing)
            if unlabelled is not None:
                _, pseudo, mask = unlabelled
                strong_loss = F.cross_entropy(out[n:m].float(), pseudo, reduction="none")
                loss = loss + cfg.unlabelled_weight * (strong_loss * mask).mean()
            if outliers is not None:  # -mean_k log softmax_k = logsumexp - mean
                z = out[m:].float()
                loss = loss + cfg.outlier_exposure * (torch.logsumexp(z, 1) - z.mean(1)).mean()
        return logits, loss

    def pseudo_labels(self, weak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) pseudo-labels of weakly augmented unlabelled images, the model's top class, and a (B,) float mask,
        1 where its probability reaches train.pseudo_threshold; no gradient flows back."""
        with torch.no_grad(), self._autocast():
            probabilities = self.model(weak).float().softmax(1)
        confidence, labels = probabilities.max(1)
        return labels, (confidence >= self.settings.pseudo_threshold).float()

    def _autocast(self) -> torch.autocast:
        precision = self.settings.precision
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
                              enabled=precision != "fp32")

    def update(self, loss: torch.Tensor) -> None:
        """One optimizer step on `loss`'s gradients, scaled for fp16 and clipped to train.clip."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.settings.clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()


def build_parts(config: Config, group: Group = SINGLE, *, fresh: bool = True) -> Parts:
    """The parts of a run for process `group.rank` of a checked config (loop.check_settings); fresh=False (a resumed
    run) leaves model.init's weights unloaded, as the checkpoint replaces them. Seeds torch's generator, so the
    same config gives the same weights (and each process, after its reseed, its own dropout and augmentation)."""
    cfg, data = config.train, config.data
    torch.manual_seed(cfg.seed)
    device = group.place(pick_device(cfg.device))
    _check_group(cfg, group, device)
    dataset = load_dataset(data.dataset, data.data_dir, fractions=data.fractions(), seed=data.split_seed,
                           strict=data.strict)
    train_split, val_split = train_val(dataset, data.subset, data.val_fraction, data.split_seed, data.folds, data.fold)
    files = {"train": train_split, "val": val_split, "test": dataset.splits.get("test")}
    if data.extra:
        train_split = with_extra(train_split, dataset.classes, Path(data.extra).expanduser())
    if val_split is None and (cfg.schedule == "plateau" or cfg.early_stop):
        raise ImgclfError("the plateau schedule and early stopping watch the validation split; set "
                          "data.val_fraction above 0 (e.g. 0.1).")
    data_pre = default_preprocess(dataset)
    model = create_model(config.model.name, len(dataset.classes), data.channels or data_pre.channels,
                         data.image_size, pretrained=config.model.pretrained, weights=config.model.weights,
                         freeze="backbone" if cfg.freeze_epochs else config.model.freeze,
                         **config.model.options).to(device)
    if group.main and (note := collapsed_note(model)):  # once per run, from the first process
        log.warning("%s %s", config.model.name, note)
    if config.model.init and fresh:
        _start_from(model, config.model.init, dataset.classes, config.model.name)
    if cfg.sync_bn and group.active:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if group.rank:  # the same initial weights everywhere, but each process its own dropout and augmentation
        torch.manual_seed(cfg.seed + 7919 * group.rank)
    preprocess = model.input_spec.preprocess(data_pre)
    train_split, val_split = (in_memory(s, preprocess, data.in_memory, data.memory_limit_gb, data.num_workers)
                              for s in (train_split, val_split))
    augment = replace(augment_preset(dataset.kind if data.augment == "auto" else data.augment), noise=data.noise)
    unlabelled = None
    if data.unlabelled:
        unlabelled = in_memory(load_unlabelled(Path(unlabelled_folder(data)).expanduser(), data.strict), preprocess,
                               data.in_memory, data.memory_limit_gb, data.num_workers)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    val_shard = _shard(val_split, group)
    steps_per_epoch = len(train_split) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ImgclfError(f"batch size {cfg.batch_size} is larger than the {len(train_split)} training "
                          "images; lower train.batch_size.")
    total_steps = math.ceil(cfg.epochs * steps_per_epoch)
    optimizer = make_optimizer(model, cfg)
    schedule, per_step = make_schedule(optimizer, cfg, steps_per_epoch, total_steps)
    return Parts(settings=cfg, device=device, dataset=dataset, files=files, train_split=train_split,
                 val_split=val_split, val_shard=val_shard, preprocess=preprocess, augment=augment, model=model,
                 steps_per_epoch=steps_per_epoch, total_steps=total_steps, optimizer=optimizer, schedule=schedule,
                 per_step=per_step, loss_weights=_class_weights(train_split, len(dataset.classes), device)
                 if cfg.class_weights else None,
                 scaler=torch.amp.GradScaler(enabled=cfg.precision == "fp16" and device.type == "cuda"),
                 unlabelled=unlabelled, strong=strong_augment(augment) if unlabelled is not None else None)


def _check_group(cfg: TrainConfig, group: Group, device: torch.device) -> None:
    """Settings that the number of processes or the device rule out, before any data is read."""
    if cfg.batch_size % group.world:
        raise ImgclfError(f"train.batch_size is the global batch, split evenly among the {group.world} "
                          f"processes; {cfg.batch_size} does not divide by {group.world}: use a multiple of it.")
    if cfg.sync_bn and group.active and device.type != "cuda":
        raise ImgclfError("train.sync_bn needs GPUs (PyTorch's SyncBatchNorm runs on CUDA); on CPU leave it "
                          "off: each process then normalizes over its own share of the batch.")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ImgclfError(f"precision fp16 is not supported on {device.type}; use fp32 or bf16 "
                          "(fp16 needs CUDA).")


def _start_from(model: Classifier, run: str, classes: list[str], name: str) -> None:
    """Fine-tuning: the weights of another run of the same model on the same classes."""
    source, meta = load_model(run)
    if meta["classes"] != classes:
        raise ImgclfError(f"model.init {run} was trained on the classes {meta['classes']}, not this dataset's "
                          f"{classes}; fine-tune a run of the same dataset.")
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as err:
        raise ImgclfError(f"model.init {run} is a {meta['architecture']['name']} that does not fit "
                          f"{name} as configured ({first_line(err)}).") from err


def _shard(val_split: Split | None, group: Group) -> Split | None:
    """This process's validation images: each validates every world-th one and the sums are combined."""
    if not group.active or val_split is None:
        return val_split
    if len(val_split) < group.world:
        raise ImgclfError(f"the {len(val_split)} validation images cannot be shared among "
                          f"{group.world} processes; raise data.val_fraction or data.subset.")
    return val_split.take(range(group.rank, len(val_split), group.world))


def _class_weights(split: Split, classes: int, device: torch.device) -> torch.Tensor:
    """Inverse class frequencies of `split`, 1 on average (train.class_weights)."""
    counts = torch.bincount(split.labels, minlength=classes).float()
    return (counts.sum() / (len(counts) * counts.clamp(min=1))).to(device)
