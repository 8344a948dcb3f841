"""Directional ablation (Arditi et al. 2024): h <- h - u u^T h."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from steerpeft.interventions.base import INTERVENTIONS, Intervention, project

PROJECTOR_MAX_ROWS = 64
"""Token rows (batch x chunk length) up to which, on an accelerator, ablation with a scalar
strength is one GEMM with the projector I - s u u^T instead of a matrix-vector product plus a
rank-1 update.  Decoding steps are bound by kernel launches, not FLOPs: one kernel per hook
instead of two.  Prefill chunks (many rows) keep the rank-1 form, which is cheaper in FLOPs."""

PROJECTOR_MAX_HIDDEN = 8192
"""The projector is hidden x hidden (128 MiB in bfloat16 at 8192); larger models keep the rank-1 form."""


@INTERVENTIONS.register("ablate")
@dataclass
class Ablate(Intervention):
    """Removes the component along the unit direction (strength 1 removes all of it)."""

    _projectors: dict[tuple[int, float], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def apply(
        self, hidden: torch.Tensor, raw: torch.Tensor, unit: torch.Tensor, strength: float | torch.Tensor,
        layer: int,
    ) -> torch.Tensor:
        if isinstance(strength, float) and uses_projector(hidden):
            return torch.matmul(hidden, self.projector(unit, strength))
        projection = project(hidden, unit)
        if not (isinstance(strength, float) and strength == 1.0):
            projection = strength * projection
        return torch.addcmul(hidden, projection, unit, value=-1)

    def projector(self, unit: torch.Tensor, strength: float) -> torch.Tensor:
        """I - strength * u u^T in u's dtype and device, built in float32 once per unit tensor.

        Steps hand every layer that ablates the same direction the same `unit` tensor, so
        ablation at all layers keeps one matrix per device.
        """
        key = (id(unit), strength)
        cached = self._projectors.get(key)
        if cached is None or cached[0] is not unit:
            u = unit.float()
            matrix = torch.eye(u.shape[0], device=u.device) - strength * torch.outer(u, u)
            cached = (unit, matrix.to(unit.dtype))
            self._projectors[key] = cached
        return cached[1]

    def release(self) -> None:
        self._projectors.clear()


def uses_projector(hidden: torch.Tensor) -> bool:
    """Whether the one-GEMM form applies: decoding-sized chunks on an accelerator, eager only
    (under `torch.compile` the rank-1 form fuses and CUDA graphs remove the launches)."""
    width = hidden.shape[-1]
    return (
        hidden.device.type != "cpu" and not torch.compiler.is_compiling() and width <= PROJECTOR_MAX_HIDDEN
        and hidden.numel() <= PROJECTOR_MAX_ROWS * width
    )
