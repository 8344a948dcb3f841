"""MARS layer selection (MARS.md step 5): best separation within utility and safety limits.

For each candidate layer (default [0.2 L, 0.8 L)) on validation data:
- `separation`: AUROC of t between harmful and harmless text prompts;
- `induce`: mean rise of the first-token refusal score on harmless prompts
  when the decision state is pushed to the harmful centroid (> 0 wanted);
- `kl`: mean first-token KL on harmless prompts under the MARS scaler;
- `false_trigger`: share of held-out harmless prompts (text and neutral media) whose
  gate opens; tau comes from the other half of the held-out prompts.
The layer with the best separation among those within `limits` (and with a gate that can
act: tau < 1 for the traversal form) wins; each row records what excluded it.  When no layer
is within the limits the fit fails with the reasons, or, with `on_no_layer: best`, takes the
best-separating layer with a warning.  KL and induce are priced near one pass over the prompts:
the prompts minus their decision token are prefilled once and every candidate runs one token
per row (`shared_prefix`; the same numbers as a full forward per candidate).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from steerpeft.errors import ConfigError, SelectionError, SteeringWarning
from steerpeft.evaluation.decision_prefix import DecisionPrefix
from steerpeft.evaluation.first_token import first_token_refusal_score, refusal_token_ids
from steerpeft.evaluation.kl import first_token_kl
from steerpeft.evaluation.runs import decision_logits
from steerpeft.fitting import FitData
from steerpeft.interventions import AddDirection, Clamp
from steerpeft.mars.calibration import LayerRegion, gate_value, layer_region, neutral_statistics
from steerpeft.mars.scaler import TrustRegionScaler
from steerpeft.plan import Plan, SteeringStep
from steerpeft.provenance import model_info
from steerpeft.registry import suggest
from steerpeft.scalers import ConstantScaler
from steerpeft.selectors.base import SELECTORS, LayerSelector, Selection, layer_range
from steerpeft.selectors.scores import auroc

DEFAULT_LIMITS = {"kl": 0.1, "false_trigger": 0.05, "induce": 0.0}
LAYERS_PER_STEP = 8
"""Candidate layers scored per stacked decision step (two plans each: induce and the gate)."""
NO_LAYER_CHOICES = ("fail", "best")
"""What a fit does when no candidate layer is within the limits: stop with the reasons, or take the
best-separating layer anyway with a `SteeringWarning` (and say so in the table and the report)."""


@SELECTORS.register("mars")
@dataclass
class MarsSelector(LayerSelector):
    """Scores every candidate layer on separation, induce, KL and false triggers."""

    candidates: Any = field(default_factory=lambda: {"start": 0.2, "stop": 0.8})
    limits: dict[str, float] = field(default_factory=dict)
    tau_quantile: float = 0.95
    form: str = "traversal"
    on_no_layer: str = "fail"
    shared_prefix: bool = True

    def __post_init__(self) -> None:
        if self.on_no_layer not in NO_LAYER_CHOICES:
            raise ConfigError(f"mars selector on_no_layer must be one of {', '.join(NO_LAYER_CHOICES)}, got "
                              f"{self.on_no_layer!r}.{suggest(str(self.on_no_layer), list(NO_LAYER_CHOICES))}")
        for key in self.limits:
            if key not in DEFAULT_LIMITS:
                raise ConfigError(f"mars selector limit {key!r} is unknown.{suggest(key, list(DEFAULT_LIMITS))} "
                                  f"Limits: {', '.join(DEFAULT_LIMITS)}.")
        self.limits = {**DEFAULT_LIMITS, **{k: float(v) for k, v in self.limits.items()}}

    def candidate_layers(self, num_layers: int) -> list[int]:
        return layer_range(self.candidates, num_layers)

    def select(self, data: FitData) -> Selection:
        stats = neutral_statistics(data)
        positive, negative = data.validation()
        harmless_prompts = data.prompts.get("negative_validation") or data.prompts["negative"]
        batches = list(data.services.text_batches(list(harmless_prompts.prompts)))
        refusal_ids = refusal_token_ids(data.tokenizer)
        logits_under = _logits_function(data.model, batches, self.shared_prefix)
        base_logits = logits_under([None])[0]
        base_scores = first_token_refusal_score(base_logits, refusal_ids)
        table: list[dict[str, Any]] = []
        layers = self.candidate_layers(data.layout.num_layers)
        for start in range(0, len(layers), LAYERS_PER_STEP):
            chunk = layers[start:start + LAYERS_PER_STEP]
            regions = {layer: layer_region(data, stats, layer) for layer in chunk}
            taus = {layer: stats.tau(regions[layer], layer, self.tau_quantile) for layer in chunk}
            plans = [plan for layer in chunk for plan in (_push_to_harmful(data, layer, regions[layer]),
                                                           _mars_plan(data, layer, regions[layer], taus[layer], self.form))]
            logits = logits_under(plans)
            for index, layer in enumerate(chunk):
                region, tau = regions[layer], taus[layer]
                t_pos = gate_value(positive.prompts(layer) @ region.unit, region)
                t_neg = gate_value(negative.prompts(layer) @ region.unit, region)
                neutral = stats.gate_values(region, layer, "check")
                induce_logits, mars_logits = logits[2 * index], logits[2 * index + 1]
                row = {
                    "layer": layer,
                    "separation": auroc(t_pos, t_neg),
                    "induce": float((first_token_refusal_score(induce_logits, refusal_ids) - base_scores).mean()),
                    "kl": float(first_token_kl(base_logits, mars_logits).mean()),
                    "false_trigger": float((neutral > tau).double().mean()) if len(neutral) else 0.0,
                    "tau": tau,
                    "t_harmful_mean": float(t_pos.mean()),
                    "t_harmless_mean": float(t_neg.mean()),
                }
                row["excluded_by"] = exclusions(row, self.limits, self.form)
                row["within_limits"] = not row["excluded_by"]
                table.append(row)
                data.services.emit("on_layer_scored", layer=layer, scores=row)
        eligible = [row for row in table if row["within_limits"]]
        if not eligible:
            message = no_layer_message(table, self.limits)
            if self.on_no_layer == "fail":
                raise SelectionError(message)
            warnings.warn(f"{message}\nUsing the best-separating layer anyway (on_no_layer=best).", SteeringWarning,
                          stacklevel=2)
        best = max(eligible or table, key=lambda row: (row["separation"], -row["kl"]))
        for row in table:
            row["chosen"] = row is best
            row["fallback"] = not eligible and row is best
        return Selection([best["layer"]], table)


def exclusions(row: dict[str, Any], limits: dict[str, float], form: str) -> list[str]:
    """Why a scored layer is outside the limits (empty when it is within), one phrase per reason."""
    reasons = []
    if form == "traversal" and row["tau"] >= 1.0:
        reasons.append(f"tau {row['tau']:.3f} >= 1: harmless prompts reach past the harmful centroid, so the "
                       "traversal gate cannot move anything")
    if row["kl"] > limits["kl"]:
        reasons.append(f"kl {row['kl']:.3g} > {limits['kl']:g}")
    if row["false_trigger"] > limits["false_trigger"]:
        reasons.append(f"false_trigger {row['false_trigger']:.1%} > {limits['false_trigger']:.1%}")
    if not row["induce"] > limits["induce"]:
        reasons.append(f"induce {row['induce']:.3g} <= {limits['induce']:g} (pushing to the harmful centroid does not "
                       "raise refusal)")
    return reasons


def no_layer_message(table: list[dict[str, Any]], limits: dict[str, float]) -> str:
    """The error of a fit whose candidate layers are all outside the limits: each layer's reasons, what to try."""
    header = (f"No candidate layer is within the MARS selector's limits (kl <= {limits['kl']:g}, false_trigger <= "
              f"{limits['false_trigger']:.0%}, induce > {limits['induce']:g}, and a gate that can act: tau < 1):")
    lines = [header]
    lines += [f"  layer {row['layer']} (separation {row['separation']:.3f}): {'; '.join(row['excluded_by'])}"
              for row in table]
    lines.append("What to try: more prompts, or prompts matched in style (data.positive / data.negative); other "
                 "candidate layers (steps.0.selector.candidates=[12, 14]); a relaxed limit "
                 "(steps.0.selector.limits.false_trigger=0.1); or take the best-separating layer anyway, with a "
                 "warning, with steps.0.selector.on_no_layer=best.")
    return "\n".join(lines)


def _logits_function(model: Any, batches: list[dict[str, torch.Tensor]], shared_prefix: bool
                     ) -> Callable[[list[Plan | None]], list[torch.Tensor]]:
    """Decision logits of the harmless validation prompts under each of several decision-position plans
    (None: unsteered).

    The logits stay on the model's device: KL and refusal scores over the vocabulary are computed
    there (on a GPU, moving them to the host and reducing them there cost more than the forwards).

    With `shared_prefix` the prompts minus their decision token are prefilled once and the plans run
    one token per row, several plans per step (`DecisionPrefix.logits_of_plans`: the same logits, a
    small fraction of the cost); models whose positions a prefix cannot reproduce (multimodal rope
    state) fall back to full forwards, one per plan.
    """
    if shared_prefix:
        try:
            prefix = DecisionPrefix(model, batches)
        except ConfigError:
            prefix = None
        if prefix is not None:
            return prefix.logits_of_plans

    def full_forwards(plans: list[Plan | None]) -> list[torch.Tensor]:
        found = []
        for plan in plans:
            with plan.apply(model) if plan is not None else contextlib.nullcontext():
                found.append(torch.cat([decision_logits(model, batch) for batch in batches]).float())
        return found

    return full_forwards


def _push_to_harmful(data: FitData, layer: int, region: LayerRegion) -> Plan:
    """Full steering for the induce score: clamp the decision state's projection to p+."""
    step = SteeringStep({layer: data.directions.vectors[layer]}, Clamp(target=region.p_plus), ConstantScaler(1.0),
                        "decision", "induce")
    return Plan([step], model_info(data.model, data.layout, data.tokenizer))


def _mars_plan(data: FitData, layer: int, region: LayerRegion, tau: float, form: str) -> Plan:
    scaler = TrustRegionScaler(form=form, tau=tau)
    scaler.regions[layer] = region
    step = SteeringStep({layer: data.directions.vectors[layer]}, AddDirection(normalize=True), scaler, "decision", "mars")
    return Plan([step], model_info(data.model, data.layout, data.tokenizer))
