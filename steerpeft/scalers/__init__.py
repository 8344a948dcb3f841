"""Scalers: how strongly to steer, possibly per input row."""

from steerpeft._moved import moved
from steerpeft.scalers.base import SCALERS, Scaler
from steerpeft.scalers.conditional import ConditionalScaler
from steerpeft.scalers.constant import ConstantScaler

__all__ = ["SCALERS", "ConditionalScaler", "ConstantScaler", "Scaler"]


# moved to the MARS wing; the old name stays one release
__getattr__ = moved(__name__, "steerpeft.mars.scaler", ("TrustRegionScaler",))
