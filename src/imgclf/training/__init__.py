"""Training: `train(config) -> Run`, writing a resumable run directory."""

from imgclf.training.loop import LostProcess, Run, TrainingError, parse_duration, pick_device, train

__all__ = ["LostProcess", "Run", "TrainingError", "parse_duration", "pick_device", "train"]
