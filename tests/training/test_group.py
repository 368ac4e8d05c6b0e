"""Group's agreement on why to stop, with the other process's all_reduce stood in for (no second process)."""

from __future__ import annotations

import pytest
import torch

from imgclf.training import distributed
from imgclf.training.distributed import Group
from imgclf.training.loop import _STOPS
from imgclf.training.summary import StopReason


@pytest.mark.parametrize(("mine", "theirs", "agreed"), [
    (None, None, None), (None, StopReason.MAX_STEPS, StopReason.MAX_STEPS),
    (StopReason.TIME, StopReason.MAX_STEPS, StopReason.TIME), (StopReason.INTERRUPTED, StopReason.TIME,
                                                               StopReason.INTERRUPTED),
    (StopReason.MAX_STEPS, StopReason.INTERRUPTED, StopReason.INTERRUPTED)])
def test_processes_agree_on_the_most_urgent_reason_to_stop(monkeypatch, mine, theirs, agreed):
    def all_reduce(code: torch.Tensor, op: object) -> None:  # the other process holds `theirs`
        assert op == distributed.dist.ReduceOp.MAX
        code.copy_(torch.maximum(code, torch.tensor([_STOPS.index(theirs)])))

    monkeypatch.setattr(distributed.dist, "all_reduce", all_reduce)
    assert Group(rank=0, world=2).most_urgent(_STOPS, mine, torch.device("cpu")) == agreed
    assert Group().most_urgent(_STOPS, mine, torch.device("cpu")) == mine  # one process: its own reason
