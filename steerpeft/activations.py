"""Recorded activations and the directions extracted from them.

Everything here is float32 on the CPU whatever the model's dtype, so sums over
large prompt sets do not lose precision and results are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from steerpeft.errors import DataError, ShapeError


@dataclass
class Activations:
    """Per-layer running sums over recorded positions, and optionally one vector per prompt.

    `per_prompt[layer]` is [prompts, hidden]: the mean over each prompt's
    recorded positions (exactly the state at the decision position when that is
    what was recorded).
    """

    layers: list[int]
    sums: dict[int, torch.Tensor]
    count: int
    num_prompts: int
    per_prompt: dict[int, torch.Tensor] | None = None

    def mean(self, layer: int) -> torch.Tensor:
        if self.count == 0:
            raise DataError(
                "No positions were recorded: the prompt set is empty or the positions select nothing."
            )
        return self.sums[layer] / self.count

    def prompts(self, layer: int) -> torch.Tensor:
        if self.per_prompt is None:
            raise DataError("This method needs one activation per prompt: record with keep_per_prompt=True.")
        return self.per_prompt[layer]


@dataclass
class Directions:
    """One direction per layer plus the class centroids it came from.

    `vectors[l]` is the raw direction (for difference of means, mu+ - mu-);
    its norm carries the layer's natural scale.  `unit(l)` is normalised.
    """

    vectors: dict[int, torch.Tensor]
    positive_mean: dict[int, torch.Tensor] = field(default_factory=dict)
    negative_mean: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    def unit(self, layer: int) -> torch.Tensor:
        vector = self.vectors[layer].float()
        return vector / vector.norm()

    def projections(self, layer: int) -> tuple[float, float]:
        """(p+, p-): the centroids' projections on the unit direction."""
        unit = self.unit(layer)
        return float(self.positive_mean[layer] @ unit), float(self.negative_mean[layer] @ unit)

    def subset(self, layers: list[int]) -> Directions:
        return Directions(
            {layer: self.vectors[layer] for layer in layers},
            {layer: self.positive_mean[layer] for layer in layers if layer in self.positive_mean},
            {layer: self.negative_mean[layer] for layer in layers if layer in self.negative_mean},
        )


def check_direction(vector: torch.Tensor, hidden_size: int, where: str) -> torch.Tensor:
    """A float32 copy of `vector`, refused if it has the wrong size, NaN/inf or zero norm."""
    if not isinstance(vector, torch.Tensor):
        vector = torch.as_tensor(vector)
    if vector.is_meta:
        raise ShapeError(
            f"{where}: direction is on the 'meta' device and holds no values; load or extract it for real."
        )
    if vector.dim() != 1 or vector.shape[0] != hidden_size:
        raise ShapeError(
            f"{where}: direction has shape {tuple(vector.shape)} but the model's hidden size is "
            f"{hidden_size}. Was it made for another model? Extract it again on this model."
        )
    vector = vector.detach().float().cpu()
    if not torch.isfinite(vector).all():
        raise ShapeError(
            f"{where}: direction holds NaN or inf values; re-extract it (check the prompts and dtype)."
        )
    if float(vector.norm()) == 0.0:
        raise ShapeError(
            f"{where}: direction has zero norm, so it points nowhere; the two prompt sets gave identical "
            "means."
        )
    return vector
