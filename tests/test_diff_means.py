"""The difference-of-means extractor, plain and with the negative mean spared (biprojection)."""

from __future__ import annotations

import pytest
import torch

from steerpeft.activations import Activations
from steerpeft.errors import ConfigError
from steerpeft.extractors import EXTRACTORS


def _activations(states: torch.Tensor) -> Activations:
    return Activations([0], {0: states.sum(0)}, len(states), len(states))


def test_spared_direction_is_the_difference_without_its_negative_mean_component() -> None:
    generator = torch.Generator().manual_seed(0)
    positive = torch.randn(7, 16, generator=generator) + 3.0
    negative = torch.randn(5, 16, generator=generator) + 2.0
    plain = EXTRACTORS.build("diff_means").fit(_activations(positive), _activations(negative)).vectors[0]
    spared = EXTRACTORS.build("diff_means", {"spare_negative_mean": True}).fit(
        _activations(positive), _activations(negative)
    ).vectors[0]
    difference = positive.mean(0) - negative.mean(0)
    unit = negative.mean(0) / negative.mean(0).norm()
    torch.testing.assert_close(plain, difference)
    torch.testing.assert_close(spared, difference - (difference @ unit) * unit)
    assert abs(float(spared @ unit)) < 1e-5 and abs(float(plain @ unit)) > 1.0  # the component was there


def test_spare_negative_mean_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match="spare_negative_mean must be true or false"):
        EXTRACTORS.build("diff_means", {"spare_negative_mean": "yes"})
