"""Training: `train(config) -> Run`, writing a resumable run directory."""

from imgclf.training.loop import Run, TrainingError, parse_duration, pick_device, train

__all__ = ["Run", "TrainingError", "parse_duration", "pick_device", "train"]
