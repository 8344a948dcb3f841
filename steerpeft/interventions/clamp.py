"""Clamp the projection on the direction to a target value."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from steerpeft.errors import ConfigError
from steerpeft.interventions.base import INTERVENTIONS, Intervention, project

_NAMED_TARGETS = ("positive_centroid", "negative_centroid")


@INTERVENTIONS.register("clamp")
@dataclass
class Clamp(Intervention):
    """Sets <h, u> to `target`: a number, or the projection of a class centroid.

    Named targets are resolved per layer at fit time (`positive_centroid` makes
    every input look as harmful as the mean harmful prompt along u).
    """

    target: float | str = "positive_centroid"
    resolved: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.target, str) and self.target not in _NAMED_TARGETS:
            raise ConfigError(
                f"clamp target must be a number or one of {_NAMED_TARGETS}, got {self.target!r}."
            )
        self.resolved = {int(k): float(v) for k, v in self.resolved.items()}

    def resolve(self, layer: int, positive_projection: float, negative_projection: float) -> None:
        if isinstance(self.target, str):
            value = positive_projection if self.target == "positive_centroid" else negative_projection
            self.resolved[layer] = float(value)

    def value_at(self, layer: int) -> float:
        if not isinstance(self.target, str):
            return float(self.target)
        if layer not in self.resolved:
            raise ConfigError(
                f"clamp target {self.target!r} was not resolved for layer {layer}: fit the plan first."
            )
        return self.resolved[layer]

    def apply(
        self, hidden: torch.Tensor, raw: torch.Tensor, unit: torch.Tensor, strength: float | torch.Tensor,
        layer: int,
    ) -> torch.Tensor:
        return torch.addcmul(hidden, strength * (self.value_at(layer) - project(hidden, unit)), unit)
