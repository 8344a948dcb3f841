"""Linear probe: the weight of an L2-regularised logistic regression (no sklearn needed)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steerpeft.activations import Activations
from steerpeft.extractors.base import EXTRACTORS, Extractor


@EXTRACTORS.register("probe")
@dataclass
class LinearProbe(Extractor):
    """Fits p(positive | h) = sigmoid(w^T z + b) on standardised activations z.

    The direction is w mapped back to activation space, normalised, and scaled
    by the mean difference's projection (so strengths compare with diff_means).
    Deterministic: full-batch L-BFGS from zeros.
    """

    needs_per_prompt = True
    min_prompts_per_class = 2
    l2: float = 1e-2
    max_iter: int = 200

    def direction(self, positive: Activations, negative: Activations, layer: int) -> torch.Tensor:
        features = torch.cat([positive.prompts(layer), negative.prompts(layer)]).double()
        labels = torch.cat(
            [torch.ones(len(positive.prompts(layer))), torch.zeros(len(negative.prompts(layer)))]
        ).double()
        mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
        z = (features - mean) / std
        weight = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def loss_fn() -> torch.Tensor:
            optimizer.zero_grad()
            logits = z @ weight + bias
            loss = (
                torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
                + self.l2 * weight.pow(2).sum()
            )
            loss.backward()
            return loss

        optimizer.step(loss_fn)
        direction = (weight.detach() / std).float()
        unit = direction / direction.norm()
        scale = float(unit @ (positive.mean(layer) - negative.mean(layer)))
        if scale < 0:
            unit, scale = -unit, -scale
        return unit * scale
