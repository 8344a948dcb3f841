"""Directional ablation (Arditi et al. 2024): h <- h - u u^T h."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steerkit.interventions.base import INTERVENTIONS, Intervention, project


@INTERVENTIONS.register("ablate")
@dataclass
class Ablate(Intervention):
    """Removes the component along the unit direction (strength 1 removes all of it)."""

    def apply(self, hidden: torch.Tensor, raw: torch.Tensor, unit: torch.Tensor, strength: float | torch.Tensor, layer: int) -> torch.Tensor:
        projection = project(hidden, unit)
        if not (isinstance(strength, float) and strength == 1.0):
            projection = strength * projection
        return torch.addcmul(hidden, projection, unit, value=-1)
