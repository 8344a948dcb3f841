"""Layer selectors: which layer(s) a step steers."""

from steerpeft.selectors.base import SELECTORS, LayerSelector, Selection, layer_range
from steerpeft.selectors.fixed import FixedLayers
from steerpeft.selectors.mars import MarsSelector
from steerpeft.selectors.scores import SCORES, auroc
from steerpeft.selectors.sweep import SweepSelector

__all__ = ["SCORES", "SELECTORS", "FixedLayers", "LayerSelector", "MarsSelector", "Selection", "SweepSelector", "auroc", "layer_range"]
