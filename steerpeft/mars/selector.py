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
from steerpeft.selectors.base import SELECTORS, LayerSelector, Selection, check_on_no_layer, layer_range
from steerpeft.selectors.scores import auroc, binomial_lower_bound

DEFAULT_LIMITS = {"kl": 0.1, "false_trigger": 0.05, "induce": 0.0}
LAYERS_PER_STEP = 8
"""Candidate layers scored per stacked decision step (two plans each: induce and the gate)."""
SCORE_CHOICES = ("separation", "refusal")
"""How the best layer within the limits is chosen: the highest separation (AUROC of t, MARS.md), or the
highest refusal rate on the validation harmful prompts under the fitted scaler (what MARS is for)."""


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
            raise ConfigError(f"mars selector score must be one of {', '.join(SCORE_CHOICES)}, got "
                              f"{self.score!r}.{suggest(str(self.score), list(SCORE_CHOICES))}")
        check_on_no_layer("mars", self.on_no_layer)
        for key in self.limits:
            if key not in DEFAULT_LIMITS:
                raise ConfigError(f"mars selector limit {key!r} is unknown."
                                  f"{suggest(key, list(DEFAULT_LIMITS))} "
                                  f"Limits: {', '.join(DEFAULT_LIMITS)}.")
        self.limits = {**DEFAULT_LIMITS, **{k: float(v) for k, v in self.limits.items()}}

    def candidate_layers(self, num_layers: int) -> list[int]:
        return layer_range(self.candidates, num_layers)

    def select(self, data: FitData) -> Selection:
        """Score every candidate, cheapest first: a layer the recorded states already exclude (tau, false
        triggers) or whose push to the harmful centroid does not raise refusal (induce) gets no target, KL
        or refusal forwards; the table says what excluded it.  (The chosen layer is always scored fully.)"""
        stats = neutral_statistics(data)
        template = (
            data.scaler if isinstance(data.scaler, TrustRegionScaler) else TrustRegionScaler(form=self.form)
        )
        layers = self.candidate_layers(data.layout.num_layers)
        regions = {layer: layer_region(data, stats, layer) for layer in layers}
        rows, checked = {}, {}  # checked: how many held-out harmless inputs the false-trigger count saw
        for layer in layers:
            rows[layer], checked[layer] = self._state_scores(data, stats, layer, regions[layer])
        scoring = _GateScoring(data, self, template, regions)
        scoring.induce(rows)
        promising = [layer for layer in layers if not exclusions(rows[layer], self.limits, template.form)]
        for layer in layers:
            if layer not in promising:
                self._finish(data, rows[layer], template, checked[layer])
        scoring.calibrate_targets(promising)  # every layer's bisection at once: stacked steps
        for start in range(0, len(promising), LAYERS_PER_STEP):
            chunk = promising[start:start + LAYERS_PER_STEP]
            scoring.gate(chunk, rows)
            for layer in chunk:
                self._finish(data, rows[layer], template, checked[layer])
        table = [rows[layer] for layer in layers]
        eligible = [row for row in table if row["within_limits"]]
        if not eligible:
            message = no_layer_message(table, self.limits)
            if self.on_no_layer == "fail":
                raise SelectionError(message)
            warnings.warn(
                f"{message}\nUsing the best-separating layer anyway (on_no_layer=best).", SteeringWarning,
                stacklevel=2,
            )
        rank = (
            (lambda row: (row["refusal"], row["separation"])) if self.score == "refusal" and eligible
            else (lambda row: (row["separation"], -(row["kl"] if row["kl"] is not None else 0.0)))
        )
        best = max(eligible or table, key=rank)
        if best["kl"] is None:  # a fallback layer the limits excluded early: score it fully too
            scoring.gate([best["layer"]], rows)
            best["excluded_by"] = exclusions(best, self.limits, template.form, checked[best["layer"]])
        for row in table:
            row["chosen"] = row is best
            row["fallback"] = not eligible and row is best
        return Selection([best["layer"]], table)

    def _state_scores(
        self, data: FitData, stats: Any, layer: int, region: LayerRegion
    ) -> tuple[dict[str, Any], int]:
        """What the recorded validation states give without a forward: separation, tau, false triggers
        (the row, and how many inputs the false-trigger count checked)."""
        positive, negative = data.validation()
        t_pos = gate_value(positive.prompts(layer) @ region.unit, region)
        t_neg = gate_value(negative.prompts(layer) @ region.unit, region)
        triggers, checked = stats.false_triggers(region, layer, self.tau_quantile)
        row = {
            "layer": layer,
            "separation": auroc(t_pos, t_neg),
            "induce": None,
            "kl": None,
            "false_trigger": triggers / checked if checked else 0.0,
            "false_trigger_bound": binomial_lower_bound(triggers, checked),
            "tau": stats.tau(region, layer, self.tau_quantile),
            "target": None,
            "t_harmful_mean": float(t_pos.mean()),
            "t_harmless_mean": float(t_neg.mean()),
        }
        return row, checked

    def _finish(self, data: FitData, row: dict[str, Any], template: TrustRegionScaler, checked: int) -> None:
        row["excluded_by"] = exclusions(row, self.limits, template.form, checked)
        row["within_limits"] = not row["excluded_by"]
        data.services.emit("on_layer_scored", layer=row["layer"], scores=row)


class _GateScoring:
    """The forward-pass scores of the sweep, on the decision prefix of the validation prompts."""

    def __init__(self, data: FitData, selector: MarsSelector, template: TrustRegionScaler,
                 regions: dict[int, LayerRegion]) -> None:
        self.data, self.selector, self.template, self.regions = data, selector, template, regions
        self.refusal_ids = refusal_token_ids(data.tokenizer)
        self.flags = torch.tensor(self.refusal_ids)
        self.harmless = _runner(data, "negative_validation", "negative", selector.shared_prefix)
        self.harmful = _runner(data, "positive_validation", "positive", selector.shared_prefix) \
            if selector.score == "refusal" else None
        self.base_logits = self.harmless([None])[0]
        self.base_scores = first_token_refusal_score(self.base_logits, self.refusal_ids)
        self.base_refusal = float(refusal_flags(self.harmful([None])[0], self.flags).double().mean()) \
            if self.harmful else None

    def induce(self, rows: dict[int, dict[str, Any]]) -> None:
        """Mean rise of the first-token refusal score on harmless prompts pushed to the harmful centroid."""
        layers = list(rows)
        for start in range(0, len(layers), 2 * LAYERS_PER_STEP):
            chunk = layers[start:start + 2 * LAYERS_PER_STEP]
            pushed = self.harmless(
                [_push_to_harmful(self.data, layer, self.regions[layer]) for layer in chunk]
            )
            for layer, logits in zip(chunk, pushed, strict=True):
                rows[layer]["induce"] = float((first_token_refusal_score(logits, self.refusal_ids)
                                               - self.base_scores).mean())

    def calibrate_targets(self, layers: list[int]) -> None:
        """The target of every layer in `layers` (memoised in the fit's cache), all bisections stacked."""
        if isinstance(self.template.target, str) and layers:
            layer_targets(self.data, {layer: self.regions[layer] for layer in layers}, self.template)

    def gate(self, layers: list[int], rows: dict[int, dict[str, Any]]) -> None:
        """The fitted trust region at each layer (its target calibrated first): KL on harmless, and the
        refusal rate on harmful prompts when the selector ranks by refusal."""
        regions = {layer: self.regions[layer] for layer in layers}
        targets = (
            layer_targets(self.data, regions, self.template) if isinstance(self.template.target, str) else {}
        )
        for layer, region in regions.items():
            region.target = targets[layer].target if layer in targets else float(self.template.target)
        gates = [
            _mars_plan(self.data, layer, regions[layer], rows[layer]["tau"], self.template)
            for layer in layers
        ]
        kl_logits = self.harmless(gates)
        refused = self.harmful(gates) if self.harmful else None
        for index, layer in enumerate(layers):
            row = rows[layer]
            row["kl"] = float(first_token_kl(self.base_logits, kl_logits[index]).mean())
            row["target"] = regions[layer].target
            if layer in targets:
                row["target_share"], row["target_reached"] = targets[layer].share, targets[layer].reached
            if refused is not None:
                row["refusal"] = float(refusal_flags(refused[index], self.flags).double().mean())
                row["refusal_unsteered"] = self.base_refusal


def exclusions(row: dict[str, Any], limits: dict[str, float], form: str, checked: int = 0) -> list[str]:
    """Why a scored layer is outside the limits (empty when it is within), one phrase per reason.

    The false-trigger limit excludes a layer only when the data show its rate is above the limit: the
    one-sided 95% lower bound of the rate (`false_trigger_bound`) exceeds it.  tau is the 95th
    percentile of harmless t by construction, so a well-calibrated layer shows a trigger or two among
    a few dozen check prompts by chance alone; the observed rate would exclude good layers at random.
    """
    reasons = []
    if form == "traversal" and row["tau"] >= 1.0:
        reasons.append(f"tau {row['tau']:.3f} >= 1: harmless prompts reach past the harmful centroid, so the "
                       "gate cannot tell them from harmful ones (and a traversal to the centroid cannot move "
                       "anything)")
    if row.get("kl") is not None and row["kl"] > limits["kl"]:
        reasons.append(f"kl {row['kl']:.3g} > {limits['kl']:g}")
    bound = row.get("false_trigger_bound", row["false_trigger"])
    if bound > limits["false_trigger"]:
        seen = f"{round(row['false_trigger'] * checked)}/{checked}, " if checked else ""
        reasons.append(f"false_trigger {row['false_trigger']:.1%} ({seen}95% lower bound {bound:.1%}) > "
                       f"{limits['false_trigger']:.1%}")
    if row.get("induce") is not None and not row["induce"] > limits["induce"]:
        reasons.append(f"induce {row['induce']:.3g} <= {limits['induce']:g} (pushing to the harmful centroid "
                       "does not raise refusal)")
    return reasons


def no_layer_message(table: list[dict[str, Any]], limits: dict[str, float]) -> str:
    """The error of a fit whose candidate layers are all outside the limits: each layer's reasons, what to
    try."""
    header = (f"No candidate layer is within the MARS selector's limits (kl <= {limits['kl']:g}, "
              f"false_trigger <= {limits['false_trigger']:.0%}, induce > {limits['induce']:g}, and a gate "
              "that can act: tau < 1):")
    lines = [header]
    lines += [f"  layer {row['layer']} (separation {row['separation']:.3f}): {'; '.join(row['excluded_by'])}"
              for row in table]
    lines.append("What to try: more prompts, or prompts matched in style (data.positive / data.negative); "
                 "other candidate layers (steps.0.selector.candidates=[12, 14]); a relaxed limit "
                 "(steps.0.selector.limits.false_trigger=0.1); or take the best-separating layer anyway, "
                 "with a warning, with steps.0.selector.on_no_layer=best.")
    return "\n".join(lines)


def _runner(data: FitData, split: str, fallback: str, shared_prefix: bool) -> Any:
    """Decision logits of one prompt split (the training one when no split was held out) under several
    plans."""
    prompts = data.prompts.get(split) or data.prompts[fallback]
    return plan_logits_runner(
        data.model, list(data.services.text_batches(list(prompts.prompts))), shared_prefix
    )


def _push_to_harmful(data: FitData, layer: int, region: LayerRegion) -> Plan:
    """Full steering for the induce score: clamp the decision state's projection to p+."""
    step = SteeringStep(
        {layer: data.directions.vectors[layer]}, Clamp(target=region.p_plus), ConstantScaler(1.0), "decision",
        "induce",
    )
    return Plan([step], model_info(data.model, data.layout, data.tokenizer))


def _mars_plan(
    data: FitData, layer: int, region: LayerRegion, tau: float, template: TrustRegionScaler
) -> Plan:
    """The step's own trust region (its form, gate, target) at `layer` with that layer's tau."""
    scaler = dataclasses.replace(template, tau=tau)
    scaler.regions[layer] = region
    step = SteeringStep(
        {layer: data.directions.vectors[layer]}, AddDirection(normalize=True), scaler, "decision", "mars"
    )
    return Plan([step], model_info(data.model, data.layout, data.tokenizer))
