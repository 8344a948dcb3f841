"""What a steering step does to the residual stream.

An intervention maps hidden states `h` [batch, seq, hidden] to new ones, given
the layer's direction (`raw`, as extracted, and `unit`, normalised) and a
strength from the scaler (a float or a tensor broadcastable to [batch, seq, 1]).
The step applies it only at the chosen positions (`torch.where`), so rows and
tokens outside them stay bit-for-bit unchanged.
"""

from __future__ import annotations

import torch

from steerkit.component import Component
from steerkit.registry import Registry


class Intervention(Component):
    """Base class: subclasses implement `apply`."""

    def apply(self, hidden: torch.Tensor, raw: torch.Tensor, unit: torch.Tensor, strength: float | torch.Tensor, layer: int) -> torch.Tensor:
        raise NotImplementedError

    def resolve(self, layer: int, positive_projection: float, negative_projection: float) -> None:
        """Turn fit-time statistics into parameters (used by `Clamp` targets)."""


INTERVENTIONS: Registry[Intervention] = Registry("intervention", base=Intervention)


def project(hidden: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """<h, u> per position, accumulated in float32, returned as [..., 1] in h's dtype."""
    return (hidden.float() @ unit.float()).unsqueeze(-1).to(hidden.dtype)
