"""Activation addition (ActAdd / CAA): h <- h + strength * v."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steerpeft.interventions.base import INTERVENTIONS, Intervention


@INTERVENTIONS.register("add")
@dataclass
class AddDirection(Intervention):
    """Adds the direction scaled by the strength.

    `normalize=False` adds the raw mean difference (its norm carries the natural
    scale of the layer); `True` adds the unit vector, so strength is in norm units.
    """

    normalize: bool = False

    def apply(
        self, hidden: torch.Tensor, raw: torch.Tensor, unit: torch.Tensor, strength: float | torch.Tensor,
        layer: int,
    ) -> torch.Tensor:
        vector = unit if self.normalize else raw
        if isinstance(strength, float):
            return torch.add(hidden, vector, alpha=strength)
        return torch.addcmul(hidden, strength, vector)
