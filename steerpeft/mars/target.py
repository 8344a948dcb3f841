"""Where the trust region's traversal ends: the target level T along the direction, in t units.

MARS.md carries an input to the harmful centroid (T = 1).  On a real model that refuses only part
of the time, the average harmful prompt is refused only part of the time too, so reaching the
centroid changes little (measured on Qwen2.5-Coder-0.5B: 0.50 -> 0.51 harmful refusal).  The
premise of MARS is to move inputs into the region where the model itself refuses, so the target
can instead be read off the model's own behaviour on the fit's harmful prompts:

- `calibrated`: the smallest T on a grid (1 to 5, step 0.25) at which at least `share` of the fit
  harmful prompts get a refusal opening as their greedy first token, once their decision state is
  raised to T (never lowered: h + ReLU(p- + T s - <h,u>) u).  When no T on the grid gets there
  (a model that does not refuse along this direction), T = 1 and the fit says so;
- `refused_centroid`: the centroid of the fit harmful prompts the model already refuses (by the same
  first-token test), in t units.

Both use text prompts only, through the decision-position machinery the layer sweep uses: one
prefill of the prompts, one token per candidate, several candidates stacked per step.  Results are
memoised in `FitData.cache`, so the selector and the scaler share them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from steerpeft.errors import ConfigError
from steerpeft.evaluation.decision_prefix import plan_logits_runner
from steerpeft.evaluation.first_token import refusal_token_ids
from steerpeft.fitting import FitData
from steerpeft.interventions import AddDirection
from steerpeft.mars.calibration import LayerRegion
from steerpeft.plan import Plan, SteeringStep
from steerpeft.provenance import model_info

TARGET_MODES = ("calibrated", "refused_centroid")
GRID = tuple(1.0 + 0.25 * i for i in range(17))
"""Candidate targets, in t units: the harmful centroid (1) up to 5 spans past the harmless centroid."""
_CACHE_KEY = "mars_targets"
_OPEN = -1e9
"""A threshold every row passes: the target's calibration raises every fit prompt, whatever its gate."""


@dataclass(frozen=True)
class TargetFit:
    """The target of one layer: T in t units, the share of fit harmful prompts refused there, and whether
    the requested share was reached (False: T fell back to 1, the harmful centroid)."""

    target: float
    share: float
    reached: bool


def refusal_flags(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Bool [rows]: the greedy first token is a refusal opening (agrees with the keyword judge far more
    often than log-odds > 0 on a real model)."""
    return torch.isin(logits.argmax(dim=-1), token_ids.to(logits.device)).cpu()


def layer_targets(data: FitData, regions: dict[int, LayerRegion], template: Any) -> dict[int, TargetFit]:
    """The target of each layer in `regions` for the trust-region scaler `template` (its `target` mode and
    `target_share`); memoised per fit."""
    mode, share = template.target, float(template.target_share)
    if mode not in TARGET_MODES:
        raise ConfigError(
            f"trust_region target {mode!r} is neither a number nor one of {', '.join(TARGET_MODES)}."
        )
    cache: dict[Any, TargetFit] = data.cache.setdefault(_CACHE_KEY, {})
    missing = [layer for layer in regions if (mode, share, layer) not in cache]
    if missing:
        harmful = list(data.prompts["positive"].prompts)
        run = plan_logits_runner(data.model, list(data.services.text_batches(harmful)))
        token_ids = torch.tensor(refusal_token_ids(data.tokenizer))
        found = (
            _refused_centroids(data, {layer: regions[layer] for layer in missing}, run, token_ids)
            if mode == "refused_centroid"
            else _calibrated(
                data, {layer: regions[layer] for layer in missing}, template, run, token_ids, share
            )
        )
        cache.update({(mode, share, layer): fit for layer, fit in found.items()})
    return {layer: cache[(mode, share, layer)] for layer in regions}


def _raise_to(data: FitData, template: Any, layer: int, region: LayerRegion, target: float) -> Plan:
    """Every row's decision state raised to level `target` along u at `layer` (never lowered)."""
    scaler = dataclasses.replace(template, tau=_OPEN, gate="hard", form="traversal", recenter="none")
    scaler.regions[layer] = dataclasses.replace(region, target=target)
    step = SteeringStep(
        {layer: data.directions.vectors[layer]}, AddDirection(normalize=True), scaler, "decision", "target"
    )
    return Plan([step], model_info(data.model, data.layout, data.tokenizer))


def _calibrated(data: FitData, regions: dict[int, LayerRegion], template: Any,
                run: Callable[[Sequence[Plan | None]], list[torch.Tensor]], token_ids: torch.Tensor,
                share: float) -> dict[int, TargetFit]:
    """Smallest grid T reaching `share` per layer, by a bisection run for every layer at once.

    The refused share grows with T (the states are raised further along the refusal direction); the
    bisection assumes so, and its answer is checked: the reported share is the one measured at T."""
    layers = list(regions)
    shares: dict[tuple[int, int], float] = {}

    def measure(points: dict[int, int]) -> None:
        todo = [(layer, index) for layer, index in points.items() if (layer, index) not in shares]
        plans = [_raise_to(data, template, layer, regions[layer], GRID[index]) for layer, index in todo]
        for (layer, index), logits in zip(todo, run(plans), strict=True):
            shares[(layer, index)] = float(refusal_flags(logits, token_ids).double().mean())

    top = len(GRID) - 1
    measure({layer: top for layer in layers})
    low = {layer: 0 for layer in layers}
    high = {layer: top for layer in layers}
    reachable = [layer for layer in layers if shares[(layer, top)] >= share]
    while any(low[layer] < high[layer] for layer in reachable):
        middle = {layer: (low[layer] + high[layer]) // 2 for layer in reachable if low[layer] < high[layer]}
        measure(middle)
        for layer, index in middle.items():
            if shares[(layer, index)] >= share:
                high[layer] = index
            else:
                low[layer] = index + 1
    found = {}
    for layer in layers:
        if layer in reachable:
            found[layer] = TargetFit(GRID[high[layer]], shares[(layer, high[layer])], True)
        else:
            found[layer] = TargetFit(1.0, shares[(layer, top)], False)
    return found


def _refused_centroids(data: FitData, regions: dict[int, LayerRegion],
                       run: Callable[[Sequence[Plan | None]], list[torch.Tensor]],
                       token_ids: torch.Tensor) -> dict[int, TargetFit]:
    """Per layer, the level (t units) of the centroid of the fit harmful prompts the model refuses as they
    are."""
    refused = refusal_flags(run([None])[0], token_ids)
    found = {}
    for layer, region in regions.items():
        states = data.positive.prompts(layer)
        if not bool(refused.any()) or states.shape[0] != refused.shape[0]:
            found[layer] = TargetFit(1.0, float(refused.double().mean()), False)
            continue
        level = (float(states[refused].mean(0).float() @ region.unit.float()) - region.p_minus) / \
            (region.p_plus - region.p_minus)
        found[layer] = TargetFit(level if math.isfinite(level) else 1.0, float(refused.double().mean()), True)
    return found
