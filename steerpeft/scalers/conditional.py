"""Conditional steering (CAST, Lee et al. 2025): steer a row only if a condition holds.

The condition is the projection of the row's decision-position state, at
`condition_layer`, on the unit direction of that layer.  It is decided once
at prefill and reused by every cached decoding step of the row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from steerpeft.errors import ConfigError
from steerpeft.scalers.base import SCALERS, Scaler, decision_states

if TYPE_CHECKING:
    from steerpeft.fitting import FitData
    from steerpeft.forward_context import ForwardContext


@SCALERS.register("conditional")
@dataclass
class ConditionalScaler(Scaler):
    """Strength `alpha` for rows whose condition projection passes `threshold`, else 0.

    `threshold=None` calibrates it at fit time: the cut between positive and
    negative training projections with the best accuracy.  `when="above"`
    steers rows on the positive side (e.g. harmful prompts).
    """

    alpha: float = 1.0
    condition_layer: int | None = None
    threshold: float | None = None
    when: str = "above"
    _unit: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.when not in ("above", "below"):
            raise ConfigError(f"conditional scaler 'when' must be 'above' or 'below', got {self.when!r}.")

    def calibrate(self, data: FitData, layers: list[int]) -> None:
        if self.condition_layer is None:
            self.condition_layer = min(layers)
        if self.condition_layer > min(layers):
            raise ConfigError(
                f"condition_layer {self.condition_layer} comes after the steered layer {min(layers)}: "
                "the condition must be known before steering. Pick a condition_layer <= the steered layer."
            )
        unit = data.directions.unit(self.condition_layer)
        self._unit = unit
        if self.threshold is None:
            pos = data.positive.per_prompt[self.condition_layer] @ unit
            neg = data.negative.per_prompt[self.condition_layer] @ unit
            self.threshold = best_threshold(pos, neg)

    def observed_layers(self) -> set[int]:
        return {self._layer()}

    def _layer(self) -> int:
        if self.condition_layer is None:
            raise ConfigError(
                "conditional scaler has no condition_layer: fit the plan or set condition_layer."
            )
        return self.condition_layer

    def observe(self, layer: int, hidden: torch.Tensor, fc: ForwardContext) -> None:
        if fc.is_continuation or layer != self._layer():
            return
        unit = self._unit_on(hidden)
        projection = decision_states(hidden, fc).float() @ unit
        passed = projection > self.threshold if self.when == "above" else projection < self.threshold
        fc.row_state[id(self)] = passed.to(hidden.dtype).view(-1, 1, 1)

    def strength(self, hidden: torch.Tensor, layer: int, fc: ForwardContext) -> torch.Tensor:
        flags = fc.row_state.get(id(self))
        if flags is None:
            raise RuntimeError(
                "conditional scaler: the condition layer did not run before the steered layer."
            )
        return self.alpha * flags.to(hidden.device, hidden.dtype)

    def rows_steered(self, states: Mapping[int, torch.Tensor], layer: int, modality: torch.Tensor | None,
                     margin: float) -> torch.Tensor | None:
        condition = self._layer()
        if condition not in states:
            return None
        projection = states[condition].float() @ self._unit_on(states[condition])
        threshold = float(self.threshold)  # type: ignore[arg-type]
        return (
            projection > threshold - margin if self.when == "above" else projection < threshold + margin
        ).cpu()

    def _unit_on(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._unit is None:
            raise ConfigError("conditional scaler has no condition direction: fit the plan first.")
        if self._unit.device != hidden.device:
            self._unit = self._unit.to(hidden.device)
        return self._unit.float()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self._unit is None else {"condition_unit": self._unit.detach().float().cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "condition_unit" in state:
            self._unit = state["condition_unit"].float()


def best_threshold(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Cut point between two 1-D score sets that classifies the most correctly (positive above)."""
    scores = torch.cat([positive, negative]).float()
    labels = torch.cat([torch.ones_like(positive), torch.zeros_like(negative)]).float()
    order = torch.argsort(scores)
    sorted_scores, sorted_labels = scores[order], labels[order]
    # Cut after position i: everything <= sorted_scores[i] predicted negative.
    negatives_below = torch.cumsum(1 - sorted_labels, 0)
    positives_above = sorted_labels.sum() - torch.cumsum(sorted_labels, 0)
    correct = negatives_below + positives_above
    best = int(torch.argmax(correct))
    upper = sorted_scores[best + 1] if best + 1 < len(sorted_scores) else sorted_scores[best] + 1.0
    return float((sorted_scores[best] + upper) / 2)
