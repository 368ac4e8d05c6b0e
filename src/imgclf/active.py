"""Which images to label first: the ones the model hesitates over most, ranked by the margin between its two most
probable classes (margin sampling; Scheffer et al. 2001, "Active hidden Markov models for information
extraction"; see Settles 2009, "Active Learning Literature Survey", section 3.1)."""

from __future__ import annotations

import torch


def margins(probs: torch.Tensor) -> torch.Tensor:
    """(N, K) class probabilities, K >= 2 -> (N,) top-1 minus top-2 probability: near 0, the model hesitates."""
    top = probs.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def least_margin(probs: torch.Tensor, count: int) -> torch.Tensor:
    """The indices of the `count` rows of (N, K) probabilities with the smallest margin, smallest first (a tie
    goes to the earlier row)."""
    order = torch.sort(margins(probs), stable=True).indices
    return order[:count]
