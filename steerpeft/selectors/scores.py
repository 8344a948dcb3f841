"""Score functions for layer sweeps: (FitData, layer) -> float, registered by name."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from steerpeft.registry import Registry

if TYPE_CHECKING:
    from steerpeft.fitting import FitData

ScoreFn = Callable[["FitData", int], float]


class _ScoreRegistry(Registry[ScoreFn]):
    def register_fn(self, name: str) -> Callable[[ScoreFn], ScoreFn]:
        def decorate(fn: ScoreFn) -> ScoreFn:
            self._classes[name] = fn  # type: ignore[assignment]
            return fn

        return decorate


SCORES = _ScoreRegistry("score")


def binomial_lower_bound(successes: int, trials: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson lower bound of a rate seen as `successes` of `trials` (0 for none seen).

    The rate p at which seeing `successes` or more has probability 1 - `confidence`; found by bisection
    on the binomial tail (exact, no scipy).
    """
    if trials <= 0 or successes <= 0:
        return 0.0
    if successes > trials:
        raise ValueError(f"{successes} successes in {trials} trials")

    def tail(p: float) -> float:  # P(X >= successes | p)
        return 1.0 - sum(math.comb(trials, i) * p**i * (1 - p) ** (trials - i) for i in range(successes))

    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if tail(middle) < 1.0 - confidence:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = positive.double().view(-1, 1), negative.double().view(1, -1)
    return float(((pos > neg).double() + 0.5 * (pos == neg).double()).mean())


def validation_projections(data: FitData, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    positive, negative = data.validation()
    unit = data.directions.unit(layer)
    return positive.prompts(layer) @ unit, negative.prompts(layer) @ unit


@SCORES.register_fn("separation")
def separation(data: FitData, layer: int) -> float:
    """AUROC of held-out projections on the layer's direction (1.0 = perfectly separated)."""
    return auroc(*validation_projections(data, layer))


@SCORES.register_fn("accuracy")
def accuracy(data: FitData, layer: int) -> float:
    """Held-out accuracy of the midpoint between the training centroids' projections."""
    p_plus, p_minus = data.directions.projections(layer)
    cut = (p_plus + p_minus) / 2
    pos, neg = validation_projections(data, layer)
    correct = int((pos > cut).sum()) + int((neg <= cut).sum())
    return correct / (len(pos) + len(neg))
