"""MARS layer selection (MARS.md step 5): best separation within utility and safety limits.

For each candidate layer (default [0.2 L, 0.8 L)) on validation data:
- `separation`: AUROC of t between harmful and harmless text prompts;
- `induce`: mean rise of the first-token refusal score on harmless prompts
  when the decision state is pushed to the harmful centroid (> 0 wanted);
- `kl`: mean first-token KL on harmless prompts under the MARS scaler;
- `false_trigger`: share of held-out harmless prompts (text and neutral media) whose
  gate opens at the tau set by the other held-out prompts (leave one out), judged on its
  one-sided 95% lower bound.
The layer with the best separation among those within `limits` (and with a gate that can
act: tau < 1 for the traversal form) wins; each row records what excluded it.  When no layer
is within the limits the fit fails with the reasons, or, with `on_no_layer: best`, takes the
best-separating layer with a warning.  KL and induce are priced near one pass over the prompts:
the prompts minus their decision token are prefilled once and every candidate runs one token
per row (`shared_prefix`; the same numbers as a full forward per candidate).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from steerpeft.errors import ConfigError, SelectionError, SteeringWarning
from steerpeft.evaluation.decision_prefix import plan_logits_runner
from steerpeft.evaluation.first_token import first_token_refusal_score, refusal_token_ids
from steerpeft.evaluation.kl import first_token_kl
from steerpeft.fitting import FitData
from steerpeft.interventions import AddDirection, Clamp
from steerpeft.mars.calibration import LayerRegion, gate_value, layer_region, neutral_statistics
from steerpeft.mars.scaler import TrustRegionScaler
from steerpeft.mars.target import layer_targets, refusal_flags
from steerpeft.plan import Plan, SteeringStep
from steerpeft.provenance import model_info
from steerpeft.registry import suggest
from steerpeft.scalers import ConstantScaler
from steerpeft.selectors.base import SELECTORS, LayerSelector, Selection, layer_range
from steerpeft.selectors.scores import auroc, binomial_lower_bound

DEFAULT_LIMITS = {"kl": 0.1, "false_trigger": 0.05, "induce": 0.0}
LAYERS_PER_STEP = 8
"""Candidate layers scored per stacked decision step (two plans each: induce and the gate)."""
SCORE_CHOICES = ("separation", "refusal")
"""How the best layer within the limits is chosen: the highest separation (AUROC of t, MARS.md), or the
highest refusal rate on the validation harmful prompts under the fitted scaler (what MARS is for)."""
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
    score: str = "separation"

    def __post_init__(self) -> None:
        if self.score not in SCORE_CHOICES:
            raise ConfigError(f"mars selector score must be one of {', '.join(SCORE_CHOICES)}, got {self.score!r}."
                              f"{suggest(str(self.score), list(SCORE_CHOICES))}")
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
        template = data.scaler if isinstance(data.scaler, TrustRegionScaler) else TrustRegionScaler(form=self.form)
        layers = self.candidate_layers(data.layout.num_layers)
        regions = {layer: layer_region(data, stats, layer) for layer in layers}
        targets = layer_targets(data, regions, template) if isinstance(template.target, str) else {}
        for layer, region in regions.items():
            region.target = targets[layer].target if layer in targets else float(template.target)
        refusal_ids = refusal_token_ids(data.tokenizer)
        harmless = _runner(data, "negative_validation", "negative", self.shared_prefix)
        harmful = _runner(data, "positive_validation", "positive", self.shared_prefix) \
            if self.score == "refusal" else None
        base_logits = harmless([None])[0]
        base_scores = first_token_refusal_score(base_logits, refusal_ids)
        flags = torch.tensor(refusal_ids)
        base_refusal = float(refusal_flags(harmful([None])[0], flags).double().mean()) if harmful else None
        table: list[dict[str, Any]] = []
        for start in range(0, len(layers), LAYERS_PER_STEP):
            chunk = layers[start:start + LAYERS_PER_STEP]
            taus = {layer: stats.tau(regions[layer], layer, self.tau_quantile) for layer in chunk}
            gates = [_mars_plan(data, layer, regions[layer], taus[layer], template) for layer in chunk]
            logits = harmless([plan for layer, gate in zip(chunk, gates, strict=True)
                               for plan in (_push_to_harmful(data, layer, regions[layer]), gate)])
            refused = harmful(gates) if harmful else None
            for index, layer in enumerate(chunk):
                region, tau = regions[layer], taus[layer]
                t_pos = gate_value(positive.prompts(layer) @ region.unit, region)
                t_neg = gate_value(negative.prompts(layer) @ region.unit, region)
                triggers, checked = stats.false_triggers(region, layer, self.tau_quantile)
                row = {
                    "layer": layer,
                    "separation": auroc(t_pos, t_neg),
                    "induce": float((first_token_refusal_score(logits[2 * index], refusal_ids) - base_scores).mean()),
                    "kl": float(first_token_kl(base_logits, logits[2 * index + 1]).mean()),
                    "false_trigger": triggers / checked if checked else 0.0,
                    "false_trigger_bound": binomial_lower_bound(triggers, checked),
                    "tau": tau,
                    "target": region.target,
                    "t_harmful_mean": float(t_pos.mean()),
                    "t_harmless_mean": float(t_neg.mean()),
                }
                if layer in targets:
                    row["target_share"], row["target_reached"] = targets[layer].share, targets[layer].reached
                if refused is not None:
                    row["refusal"] = float(refusal_flags(refused[index], flags).double().mean())
                    row["refusal_unsteered"] = base_refusal
                row["excluded_by"] = exclusions(row, self.limits, template.form, checked)
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
        rank = (lambda row: (row["refusal"], row["separation"])) if self.score == "refusal" and eligible else \
            (lambda row: (row["separation"], -row["kl"]))
        best = max(eligible or table, key=rank)
        for row in table:
            row["chosen"] = row is best
            row["fallback"] = not eligible and row is best
        return Selection([best["layer"]], table)


def exclusions(row: dict[str, Any], limits: dict[str, float], form: str, checked: int = 0) -> list[str]:
    """Why a scored layer is outside the limits (empty when it is within), one phrase per reason.

    The false-trigger limit excludes a layer only when the data show its rate is above the limit: the
    one-sided 95% lower bound of the rate (`false_trigger_bound`) exceeds it.  tau is the 95th
    percentile of harmless t by construction, so a well-calibrated layer shows a trigger or two among
    a few dozen check prompts by chance alone; the observed rate would exclude good layers at random.
    """
    reasons = []
    if form == "traversal" and row["tau"] >= 1.0:
        reasons.append(f"tau {row['tau']:.3f} >= 1: harmless prompts reach past the harmful centroid, so the gate "
                       "cannot tell them from harmful ones (and a traversal to the centroid cannot move anything)")
    if row["kl"] > limits["kl"]:
        reasons.append(f"kl {row['kl']:.3g} > {limits['kl']:g}")
    bound = row.get("false_trigger_bound", row["false_trigger"])
    if bound > limits["false_trigger"]:
        seen = f"{round(row['false_trigger'] * checked)}/{checked}, " if checked else ""
        reasons.append(f"false_trigger {row['false_trigger']:.1%} ({seen}95% lower bound {bound:.1%}) > "
                       f"{limits['false_trigger']:.1%}")
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


def _runner(data: FitData, split: str, fallback: str, shared_prefix: bool) -> Any:
    """Decision logits of one prompt split (the training one when no split was held out) under several plans."""
    prompts = data.prompts.get(split) or data.prompts[fallback]
    return plan_logits_runner(data.model, list(data.services.text_batches(list(prompts.prompts))), shared_prefix)


def _push_to_harmful(data: FitData, layer: int, region: LayerRegion) -> Plan:
    """Full steering for the induce score: clamp the decision state's projection to p+."""
    step = SteeringStep({layer: data.directions.vectors[layer]}, Clamp(target=region.p_plus), ConstantScaler(1.0),
                        "decision", "induce")
    return Plan([step], model_info(data.model, data.layout, data.tokenizer))


def _mars_plan(data: FitData, layer: int, region: LayerRegion, tau: float, template: TrustRegionScaler) -> Plan:
    """The step's own trust region (its form, gate, target) at `layer` with that layer's tau."""
    scaler = dataclasses.replace(template, tau=tau)
    scaler.regions[layer] = region
    step = SteeringStep({layer: data.directions.vectors[layer]}, AddDirection(normalize=True), scaler, "decision", "mars")
    return Plan([step], model_info(data.model, data.layout, data.tokenizer))
