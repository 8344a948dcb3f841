"""Extractors: activations -> one direction per layer."""

from steerpeft.extractors.base import EXTRACTORS, Extractor
from steerpeft.extractors.diff_means import DiffMeans
from steerpeft.extractors.pca import PairedPCA
from steerpeft.extractors.probe import LinearProbe

__all__ = ["EXTRACTORS", "DiffMeans", "Extractor", "LinearProbe", "PairedPCA"]
