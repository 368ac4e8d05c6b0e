"""Training: `train(config) -> Run`, writing a resumable run directory."""

from imgclf.train.loop import Run, TrainingError, parse_duration, pick_device, train

__all__ = ["Run", "TrainingError", "parse_duration", "pick_device", "train"]
