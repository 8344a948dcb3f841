"""Score every candidate layer with a pluggable score function and keep the best."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from steerpeft.errors import ConfigError
from steerpeft.selectors.base import SELECTORS, LayerSelector, Selection, layer_range
from steerpeft.selectors.scores import SCORES

if TYPE_CHECKING:
    from steerpeft.fitting import FitData


@SELECTORS.register("sweep")
@dataclass
class SweepSelector(LayerSelector):
    """Chooses the candidate with the best `score`; every score lands in the table.

    `candidates` is a list of layers or `{start, stop}` as fractions of depth
    (default: the middle 20%-80%, where refusal directions usually live).
    `also` names extra scores to compute for the table only.
    """

    score: str = "separation"
    candidates: Any = field(default_factory=lambda: {"start": 0.2, "stop": 0.8})
    maximize: bool = True
    also: list[str] = field(default_factory=lambda: ["accuracy"])

    def __post_init__(self) -> None:
        for name in [self.score, *self.also]:
            SCORES.get(name)

    def candidate_layers(self, num_layers: int) -> list[int]:
        return layer_range(self.candidates, num_layers)

    def select(self, data: FitData) -> Selection:
        table: list[dict[str, Any]] = []
        names = [self.score] + [n for n in self.also if n != self.score]
        for layer in self.candidate_layers(data.layout.num_layers):
            row: dict[str, Any] = {"layer": layer}
            for name in names:
                row[name] = SCORES.get(name)(data, layer)
            table.append(row)
            data.services.emit("on_layer_scored", layer=layer, scores=row)
        if not table:
            raise ConfigError("The sweep has no candidate layers.")
        best = (max if self.maximize else min)(table, key=lambda row: row[self.score])
        for row in table:
            row["chosen"] = row is best
        return Selection([best["layer"]], table)
