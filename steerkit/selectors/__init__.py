"""Layer selectors: which layer(s) a step steers."""

from steerkit.selectors.base import SELECTORS, LayerSelector, Selection, layer_range
from steerkit.selectors.fixed import FixedLayers
from steerkit.selectors.mars import MarsSelector
from steerkit.selectors.scores import SCORES, auroc
from steerkit.selectors.sweep import SweepSelector

__all__ = ["SCORES", "SELECTORS", "FixedLayers", "LayerSelector", "MarsSelector", "Selection", "SweepSelector", "auroc", "layer_range"]
