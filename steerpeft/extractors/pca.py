"""First principal component of paired differences (RepE-style)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steerpeft.activations import Activations
from steerpeft.extractors.base import EXTRACTORS, Extractor


@EXTRACTORS.register("pca")
@dataclass
class PairedPCA(Extractor):
    """Pairs prompt i of each class, takes the top right-singular vector of the differences.

    The SVD is not centred: centring would remove the mean difference, which is
    the signal.  The sign is aligned with the mean difference and the result is
    scaled by the mean difference's projection, so its norm is comparable with
    `diff_means`.
    """

    needs_per_prompt = True
    min_prompts_per_class = 2

    def direction(self, positive: Activations, negative: Activations, layer: int) -> torch.Tensor:
        pos, neg = positive.prompts(layer), negative.prompts(layer)
        pairs = min(len(pos), len(neg))
        differences = (pos[:pairs] - neg[:pairs]).double()
        _, _, right = torch.linalg.svd(differences, full_matrices=False)
        component = right[0]
        mean_difference = (positive.mean(layer) - negative.mean(layer)).double()
        scale = float(component @ mean_difference)
        if scale < 0:
            component, scale = -component, -scale
        return (component * scale).float()
