"""Training: `train(config) -> Run`, writing a resumable run directory."""

from imgclf.training.loop import LostProcess, Run, TrainingError, parse_duration, pick_device, train
from imgclf.training.summary import Best, RunSummary, StopReason

__all__ = ["Best", "LostProcess", "Run", "RunSummary", "StopReason", "TrainingError", "parse_duration", "pick_device",
           "train"]
