"""Plans restricted to a block of rows, so several plans steer one batch side by side.

`for_rows(plan, rows)` multiplies a plan's strength (and re-centering shift) by a 0/1 row mask, so
the other rows get `h + 0 * v`, which is `h` exactly.  A batch that repeats the same prompts once
per plan, each block steered by its own restricted plan, gives every plan's result in one forward:
on an accelerator a small step is bound by launching its kernels, not by its rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from steerpeft.errors import DataError
from steerpeft.plan import Plan
from steerpeft.scalers.base import Scaler


@dataclass
class RowSubsetScaler(Scaler):
    """`inner`'s strength and shift on the rows where `rows` is 1, zero elsewhere (runtime only, never
    saved)."""

    inner: Scaler
    rows: torch.Tensor  # [batch] 0/1
    _masks: dict[tuple[torch.device, torch.dtype], torch.Tensor] = field(
        default_factory=dict, init=False, repr=False
    )

    def _mask(self, like: torch.Tensor) -> torch.Tensor:
        if self.rows.shape[0] != like.shape[0]:
            raise DataError(
                f"A row-restricted plan was built for {self.rows.shape[0]} rows but runs on {like.shape[0]}."
            )
        key = (like.device, like.dtype)
        if key not in self._masks:  # copied to the device once, not in every hook call
            self._masks[key] = self.rows.to(like.device, like.dtype).view(-1, 1, 1)
        return self._masks[key]

    def observed_layers(self) -> set[int]:
        return self.inner.observed_layers()

    def observe(self, layer: int, hidden: torch.Tensor, fc: Any) -> None:
        self.inner.observe(layer, hidden, fc)

    def prepare(self, layer: int, like: torch.Tensor) -> None:
        self.inner.prepare(layer, like)

    def strength(self, hidden: torch.Tensor, layer: int, fc: Any) -> torch.Tensor:
        return self._mask(hidden) * self.inner.strength(hidden, layer, fc)

    def shift(self, hidden: torch.Tensor, layer: int, fc: Any) -> torch.Tensor | None:
        shift = self.inner.shift(hidden, layer, fc)
        return None if shift is None else self._mask(hidden) * shift


def for_rows(plan: Plan, rows: torch.Tensor) -> Plan:
    """`plan` steering only the rows where `rows` (bool or 0/1, [batch]) is set; other rows are left exactly
    alone."""
    mask = torch.as_tensor(rows).float()
    steps = [dataclasses.replace(step, scaler=RowSubsetScaler(step.scaler, mask)) for step in plan.steps]
    return Plan(steps, plan.model_info, plan.metadata)
