"""First-token KL: how far steering moves the next-token distribution (a utility proxy)."""

from __future__ import annotations

import torch

from steerpeft.errors import ShapeError


def first_token_kl(reference_logits: torch.Tensor, steered_logits: torch.Tensor) -> torch.Tensor:
    """`KL(P_ref || P_steered)` per row, in nats, float32, shape `logits.shape[:-1]`.

    Both are next-token logits [B, V] at the same positions of the same batch.
    Computed from log-softmax (no underflow); tokens the reference gives zero
    probability contribute nothing, and rounding below zero is clamped away.
    """
    if reference_logits.shape != steered_logits.shape:
        raise ShapeError(
            f"Reference and steered logits must have the same shape, got {tuple(reference_logits.shape)} "
            f"and {tuple(steered_logits.shape)}."
        )
    log_p = torch.log_softmax(reference_logits.float(), dim=-1)
    log_q = torch.log_softmax(steered_logits.float().to(log_p.device), dim=-1)
    terms = torch.where(log_p > float("-inf"), log_p.exp() * (log_p - log_q), torch.zeros_like(log_p))
    return terms.sum(dim=-1).clamp_min(0.0)
