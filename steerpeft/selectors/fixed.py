"""A fixed, user-chosen layer (or layers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from steerpeft.selectors.base import SELECTORS, LayerSelector, Selection, layer_range

if TYPE_CHECKING:
    from steerpeft.fitting import FitData


@SELECTORS.register("fixed")
@dataclass
class FixedLayers(LayerSelector):
    """Steers exactly `layers` (an index or a list)."""

    layers: int | list[int] = 0

    def candidate_layers(self, num_layers: int) -> list[int]:
        return layer_range(self.layers if isinstance(self.layers, int) else list(self.layers), num_layers)

    def select(self, data: FitData) -> Selection:
        return Selection(self.candidate_layers(data.layout.num_layers), [])
