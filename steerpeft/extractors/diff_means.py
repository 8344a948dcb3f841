"""Difference of means (Arditi et al. 2024; CAA): r = mean(positive) - mean(negative)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steerpeft.activations import Activations
from steerpeft.extractors.base import EXTRACTORS, Extractor


@EXTRACTORS.register("diff_means")
@dataclass
class DiffMeans(Extractor):
    """Needs only running sums, so it scales to any number of prompts."""

    def direction(self, positive: Activations, negative: Activations, layer: int) -> torch.Tensor:
        return positive.mean(layer) - negative.mean(layer)
