"""How a fit holds prompts out: one seeded split that the fit, the run and `eval` all recompute.

The split is a pure function of (prompts, fraction, seed), so the run can evaluate on exactly
the prompts the fit held out without rebuilding the fit's components.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MIN_PROMPTS_TO_SPLIT = 4
"""Fewer prompts than this are not split: every prompt is used for fitting."""


def holdout_split(prompts: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(kept, held out): a `seed`-ed permutation picks round(len * fraction) prompts to hold out.

    Each part keeps the input order.  Nothing is held out when `fraction <= 0` or there are fewer
    than `MIN_PROMPTS_TO_SPLIT` prompts.
    """
    items = list(prompts)
    if fraction <= 0 or len(items) < MIN_PROMPTS_TO_SPLIT:
        return items, []
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[: max(1, round(len(items) * fraction))])
    return [p for i, p in enumerate(items) if i not in held], [p for i, p in enumerate(items) if i in held]
