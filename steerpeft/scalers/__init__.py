"""Scalers: how strongly to steer, possibly per input row."""

from steerpeft.scalers.base import SCALERS, Scaler
from steerpeft.scalers.conditional import ConditionalScaler
from steerpeft.scalers.constant import ConstantScaler
from steerpeft.scalers.trust_region import TrustRegionScaler

__all__ = ["SCALERS", "ConditionalScaler", "ConstantScaler", "Scaler", "TrustRegionScaler"]
