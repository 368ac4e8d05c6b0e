"""Several processes training one model (torchrun + DistributedDataParallel): which process this is, its share
of the data, and the few collectives the loop needs. With one process every function here is a no-op."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from imgclf.errors import ImgclfError, first_line

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Group:
    """This process's place among the `world` processes of a run (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run directory and logs progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def place(self, device: torch.device) -> torch.device:
        """One GPU per process: cuda becomes cuda:LOCAL_RANK."""
        if self.active and device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def shard(self, order: torch.Tensor, batch_size: int) -> torch.Tensor:
        """This process's part of every global batch of `order`: batch i of rank r is the r-th slice of the
        single-process batch i, so the averaged gradient is the single-process one. (steps * batch,) ->
        (steps * batch / world,); only indices move, never the images."""
        if not self.active:
            return order
        steps = len(order) // batch_size
        return order[: steps * batch_size].view(steps, self.world, batch_size // self.world)[:, self.rank].reshape(-1)

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Each value summed over all processes (float64, so counts stay exact)."""
        if not self.active:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return total.tolist()

    def most_urgent(self, reasons: tuple[T, ...], reason: T, device: torch.device) -> T:
        """Agree on a reason to stop: of the reasons the processes have, the one latest in `reasons` (which lists
        them least urgent first; reasons[0] stands for none)."""
        if not self.active:
            return reason
        code = torch.tensor([reasons.index(reason)], device=device)
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        return reasons[int(code)]

    def gather(self, value: T) -> list[T]:
        """Every process's `value`, in rank order (picklable objects such as RNG states)."""
        if not self.active:
            return [value]
        values: list = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def agree(self, decide: Callable[[], T]) -> T:
        """Rank 0 runs `decide` and every process gets its result, or raises the error rank 0 got."""
        if not self.active:
            return decide()
        outcome: list = [None]
        if self.main:
            try:
                outcome = [("ok", decide())]
            except ImgclfError as err:
                outcome = [("error", str(err))]
        dist.broadcast_object_list(outcome, src=0)
        kind, value = outcome[0]
        if kind == "error":
            raise ImgclfError(value)
        return value

    def same_buffers(self, *modules: torch.nn.Module) -> None:
        """Rank 0's buffers (batch norm statistics) everywhere: each process updates its own from its slice of
        the batch, so before validating or saving they are made the ones rank 0 saves."""
        if self.active:
            for module in modules:
                for buffer in module.buffers():
                    dist.broadcast(buffer, src=0)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The model as DistributedDataParallel sees it (gradients averaged over processes in backward)."""
        if not self.active:
            return model
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


SINGLE = Group()


def join(device: torch.device, timeout: float) -> Group:
    """This process's group: a single one, or, under torchrun (WORLD_SIZE > 1), the process group on gloo (CPU)
    or nccl (CUDA). A collective that waits longer than `timeout` seconds for another process fails the run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return SINGLE
    if device.type not in ("cpu", "cuda"):
        raise ImgclfError(f"distributed training runs on cpu (gloo) or cuda (nccl), not {device.type}; "
                          "use --device cpu or cuda.")
    group = Group(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda" and group.local_rank >= torch.cuda.device_count():
        raise ImgclfError(f"process {group.rank} wants GPU {group.local_rank} but this machine has "
                          f"{torch.cuda.device_count()}; start at most that many processes per node.")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout),
                                    device_id=group.place(device) if device.type == "cuda" else None)
        except dist.DistError as err:
            raise ImgclfError(
                f"process {group.rank} waited train.dist_timeout ({timeout:g} s) for the {world} processes of this "
                f"run to join, and not all did ({first_line(err)}). Start every process (torchrun "
                "does), check MASTER_ADDR and MASTER_PORT, or raise train.dist_timeout.") from err
        log.info("process %d of %d joined (%s)", group.rank, world, backend)
    return group


def lost(err: RuntimeError) -> bool:
    """Whether `err` says another process died, hung past the timeout or lost the network: gloo raises plain
    RuntimeErrors naming itself, nccl and the rendezvous store raise DistErrors."""
    return isinstance(err, dist.DistError) or "gloo" in str(err) or "NCCL" in str(err)


def leave(group: Group) -> None:
    if group.active and dist.is_initialized():
        dist.destroy_process_group()
