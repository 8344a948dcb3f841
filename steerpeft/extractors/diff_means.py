"""Difference of means (Arditi et al. 2024; CAA): r = mean(positive) - mean(negative)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steerpeft.activations import Activations
from steerpeft.errors import ConfigError
from steerpeft.extractors.base import EXTRACTORS, Extractor


@EXTRACTORS.register("diff_means")
@dataclass
class DiffMeans(Extractor):
    """Needs only running sums, so it scales to any number of prompts.

    `spare_negative_mean` removes from r its component along the mean negative activation
    ("biprojection"), so that projecting r out of the stream leaves the typical harmless activation
    where it was. On Qwen2.5-Coder-0.5B it removes more refusal per unit of harmless KL
    (`research/README.md`); off by default, as Arditi et al. define the direction.
    """

    spare_negative_mean: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.spare_negative_mean, bool):
            raise ConfigError(
                f"diff_means spare_negative_mean must be true or false, got {self.spare_negative_mean!r}."
            )

    def direction(self, positive: Activations, negative: Activations, layer: int) -> torch.Tensor:
        difference = positive.mean(layer) - negative.mean(layer)
        if not self.spare_negative_mean:
            return difference
        mean = negative.mean(layer).float()
        unit = mean / mean.norm().clamp_min(torch.finfo(mean.dtype).tiny)
        spared = difference.float() - (difference.float() @ unit) * unit
        return spared.to(difference.dtype)
