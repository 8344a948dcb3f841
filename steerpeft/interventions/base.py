"""What a steering step does to the residual stream.

An intervention maps hidden states `h` [batch, seq, hidden] to new ones, given
the layer's direction (`raw`, as extracted, and `unit`, normalised; both in h's
dtype and device) and a strength tensor [batch, seq, 1] in h's dtype.  The step
folds the position mask into the strength, so an intervention must leave `h`
unchanged where the strength is 0 (write it as `h + strength * something`).
"""

from __future__ import annotations

import torch

from steerpeft.component import Component
from steerpeft.registry import Registry


class Intervention(Component):
    """Base class: subclasses implement `apply`."""

    def apply(
        self, hidden: torch.Tensor, raw: torch.Tensor, unit: torch.Tensor, strength: float | torch.Tensor,
        layer: int,
    ) -> torch.Tensor:
        raise NotImplementedError

    def resolve(self, layer: int, positive_projection: float, negative_projection: float) -> None:
        """Turn fit-time statistics into parameters (used by `Clamp` targets)."""

    def release(self) -> None:
        """Drop tensors cached for inference (called when steering is removed)."""


INTERVENTIONS: Registry[Intervention] = Registry("intervention", base=Intervention)


def project(hidden: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """<h, u> per position as [..., 1] in h's dtype (`unit` already in h's dtype).

    One matrix-vector product; BLAS and cuBLAS accumulate half-precision products in
    float32, so no float32 copy of the hidden states is made on the hot path.
    """
    return torch.matmul(hidden, unit).unsqueeze(-1)
