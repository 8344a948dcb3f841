"""Extractors: activations -> one direction per layer."""

from steerkit.extractors.base import EXTRACTORS, Extractor
from steerkit.extractors.diff_means import DiffMeans
from steerkit.extractors.pca import PairedPCA
from steerkit.extractors.probe import LinearProbe

__all__ = ["EXTRACTORS", "DiffMeans", "Extractor", "LinearProbe", "PairedPCA"]
