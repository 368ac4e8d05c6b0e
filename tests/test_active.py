"""Ranking images by the margin between the model's two most probable classes."""

from __future__ import annotations

import torch

from imgclf.active import least_margin, margins


def test_least_margin_ranks_the_hesitant_first_and_breaks_ties_by_order():
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.1, 0.5, 0.4], [0.5, 0.4, 0.1], [0.34, 0.33, 0.33]])
    assert torch.allclose(margins(probs), torch.tensor([0.85, 0.05, 0.1, 0.1, 0.01]))
    assert least_margin(probs, 4).tolist() == [4, 1, 2, 3]  # rows 2 and 3 tie: the earlier first
