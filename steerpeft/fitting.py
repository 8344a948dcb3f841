"""What a fit step can see: model, data, activations, directions, and a few services of the runner.

`FitData` is handed to selectors, score functions and scaler calibration, so they can read
recorded activations or run extra forward passes (KL, induce) without reaching into the runner:
what they may ask of it is the small `FitServices` protocol (record more prompts, build text
batches, tell the callbacks), not the `Steerer` itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from steerpeft.activations import Activations, Directions
from steerpeft.architectures import ModelLayout

if TYPE_CHECKING:
    from steerpeft.data import PromptSet
    from steerpeft.plan import Plan
    from steerpeft.positions import Positions


class FitServices(Protocol):
    """What a fit component may ask of the runner that drives it."""

    batch_size: int

    def record(self, batches: Iterable[dict[str, torch.Tensor]], total: int, layers: list[int], split: str,
               positions: Positions | None = None) -> Activations:
        """Activations of pre-built batches at `layers`, reported to callbacks as `split`."""
        ...

    def text_batches(self, prompts: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
        """Chat-formatted, left-padded text batches of `prompts` on the model's device."""
        ...

    def emit(self, hook: str, **kwargs: Any) -> None:
        """Call callback hook `hook` (e.g. "on_layer_scored") with `kwargs`."""
        ...

    def plan_for(self, layer: int) -> Plan:
        """The plan the step makes if `layer` is chosen (to score a candidate by what it does)."""
        ...


@dataclass
class FitData:
    """Train and validation activations for both classes plus the extracted directions.

    `settings`: the recipe's typed sections by key (e.g. "media" for MARS); `cache`: results a
    component computes once per fit and shares with others (neutral-media statistics); `scaler`:
    the step's scaler before calibration, so a selector can score candidate layers under it.
    """

    model: Any
    tokenizer: Any
    layout: ModelLayout
    positive: Activations
    negative: Activations
    positive_validation: Activations | None
    negative_validation: Activations | None
    directions: Directions
    prompts: dict[str, PromptSet]
    services: FitServices
    settings: Mapping[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    scaler: Any = None

    def validation(self) -> tuple[Activations, Activations]:
        """Validation activations, or the training ones when no split was made."""
        if self.positive_validation is not None and self.negative_validation is not None:
            return self.positive_validation, self.negative_validation
        return self.positive, self.negative
