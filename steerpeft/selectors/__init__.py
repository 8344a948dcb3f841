"""Layer selectors: which layer(s) a step steers."""

from steerpeft._moved import moved
from steerpeft.selectors.base import SELECTORS, LayerSelector, Selection, layer_range
from steerpeft.selectors.bypass import BypassSelector
from steerpeft.selectors.fixed import FixedLayers
from steerpeft.selectors.scores import SCORES, auroc
from steerpeft.selectors.sweep import SweepSelector

__all__ = [
    "SCORES",
    "SELECTORS",
    "BypassSelector",
    "FixedLayers",
    "LayerSelector",
    "Selection",
    "SweepSelector",
    "auroc",
    "layer_range",
]


# moved to the MARS wing; the old name stays one release
__getattr__ = moved(__name__, "steerpeft.mars.selector", ("MarsSelector",))
