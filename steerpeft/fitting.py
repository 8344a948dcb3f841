"""What a fit step can see: model, data, activations and directions.

`FitData` is handed to selectors, score functions and scaler calibration, so
they can read recorded activations or run extra forward passes (KL, induce)
without reaching into the runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from steerpeft.activations import Activations, Directions
from steerpeft.architectures import ModelLayout

if TYPE_CHECKING:
    from steerpeft.data import PromptSet
    from steerpeft.steerer import Steerer


@dataclass
class FitData:
    """Train and validation activations for both classes plus the extracted directions."""

    model: Any
    tokenizer: Any
    layout: ModelLayout
    positive: Activations
    negative: Activations
    positive_validation: Activations | None
    negative_validation: Activations | None
    directions: Directions
    prompts: dict[str, PromptSet]
    steerer: Steerer
    extra: dict[str, Any] = field(default_factory=dict)

    def validation(self) -> tuple[Activations, Activations]:
        """Validation activations, or the training ones when no split was made."""
        if self.positive_validation is not None and self.negative_validation is not None:
            return self.positive_validation, self.negative_validation
        return self.positive, self.negative
