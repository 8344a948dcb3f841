"""Scalers: how strongly to steer, possibly per input row."""

from steerkit.scalers.base import SCALERS, Scaler
from steerkit.scalers.conditional import ConditionalScaler
from steerkit.scalers.constant import ConstantScaler
from steerkit.scalers.trust_region import TrustRegionScaler

__all__ = ["SCALERS", "ConditionalScaler", "ConstantScaler", "Scaler", "TrustRegionScaler"]
