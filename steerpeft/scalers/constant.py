"""A fixed strength for every input."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from steerpeft.errors import ConfigError
from steerpeft.scalers.base import SCALERS, Scaler


@SCALERS.register("constant")
@dataclass
class ConstantScaler(Scaler):
    """Steers every row with the same strength `alpha`."""

    alpha: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha):
            raise ConfigError(f"constant scaler alpha must be a finite number, got {self.alpha!r}.")
        self.alpha = float(self.alpha)

    def strength(self, hidden: torch.Tensor, layer: int, fc: object) -> float:
        return self.alpha

    def rows_steered(self, states: Mapping[int, torch.Tensor], layer: int, modality: torch.Tensor | None,
                     margin: float) -> torch.Tensor | None:
        if self.alpha != 0.0:
            return None
        return torch.zeros(next(iter(states.values())).shape[0], dtype=torch.bool)
