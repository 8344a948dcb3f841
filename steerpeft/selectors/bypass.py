"""Arditi et al.'s choice of a refusal direction to remove: the one whose ablation bypasses refusal best.

Separation says a layer's direction tells harmful from harmless prompts; it does not say that
removing it stops refusal, nor that it leaves the rest of the model alone.  For every candidate
layer this selector applies the plan the step would make with that layer's direction (for the
`ablation` recipe: ablated at every layer and the embedding) and measures, on validation prompts:

- `bypass`: the mean first-token refusal log-odds on harmful prompts under that plan (lower is better);
- `kl`: the mean first-token KL on harmless prompts under that plan (must stay within `max_kl`);
- `induce`: the mean rise of the refusal log-odds on harmless prompts when the direction is added at
  its own layer at every position (must exceed `min_induce`: the direction really is refusal).

The lowest bypass within the limits wins; every row records what excluded it.  With no layer within
the limits the fit fails with the reasons, or (`on_no_layer: best`) falls back with a warning, utility
first: the lowest bypass among the layers within the KL limit, else the lowest-KL layer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from steerpeft.errors import ConfigError, SelectionError, SteeringWarning
from steerpeft.evaluation.first_token import first_token_refusal_score, refusal_token_ids
from steerpeft.evaluation.kl import first_token_kl
from steerpeft.evaluation.runs import decision_logits
from steerpeft.interventions import AddDirection
from steerpeft.plan import Plan, SteeringStep
from steerpeft.provenance import model_info
from steerpeft.scalers import ConstantScaler
from steerpeft.selectors.base import SELECTORS, LayerSelector, Selection, check_on_no_layer, layer_range

if TYPE_CHECKING:
    from steerpeft.fitting import FitData



@SELECTORS.register("bypass")
@dataclass
class BypassSelector(LayerSelector):
    """The candidate whose plan lowers refusal on harmful prompts most, within a KL and an induce limit."""

    candidates: Any = field(default_factory=lambda: {"start": 0.0, "stop": 0.8})
    max_kl: float = 0.1
    min_induce: float = 0.0
    on_no_layer: str = "best"

    def __post_init__(self) -> None:
        check_on_no_layer("bypass", self.on_no_layer)
        if not self.max_kl > 0:
            raise ConfigError(
                f"bypass selector max_kl must be a positive number of nats, got {self.max_kl!r}."
            )

    def candidate_layers(self, num_layers: int) -> list[int]:
        return layer_range(self.candidates, num_layers)

    def select(self, data: FitData) -> Selection:
        harmful, harmless = _validation_batches(data)
        refusal_ids = refusal_token_ids(data.tokenizer)
        base_harmless = _logits(data.model, harmless, None)
        base_scores = first_token_refusal_score(base_harmless, refusal_ids)
        table: list[dict[str, Any]] = []
        for layer in self.candidate_layers(data.layout.num_layers):
            plan = data.services.plan_for(layer)
            harmful_scores = first_token_refusal_score(_logits(data.model, harmful, plan), refusal_ids)
            added = _logits(data.model, harmless, _added(data, layer))
            induced = first_token_refusal_score(added, refusal_ids)
            row: dict[str, Any] = {
                "layer": layer,
                "bypass": float(harmful_scores.mean()),
                "kl": float(first_token_kl(base_harmless, _logits(data.model, harmless, plan)).mean()),
                "induce": float((induced - base_scores).mean()),
            }
            row["excluded_by"] = self._exclusions(row)
            row["within_limits"] = not row["excluded_by"]
            table.append(row)
            data.services.emit("on_layer_scored", layer=layer, scores=row)
        if not table:
            raise ConfigError("The bypass selector has no candidate layers.")
        eligible = [row for row in table if row["within_limits"]]
        if not eligible:
            message = self._no_layer_message(table)
            if self.on_no_layer == "fail":
                raise SelectionError(message)
            warnings.warn(
                f"{message}\nUsing {self._fallback_rule()} anyway (on_no_layer=best).",
                SteeringWarning,
                stacklevel=2,
            )
        best = min(eligible, key=lambda row: row["bypass"]) if eligible else self._fallback(table)
        for row in table:
            row["chosen"] = row is best
            row["fallback"] = not eligible and row is best
        return Selection([best["layer"]], table)

    def _fallback(self, table: list[dict[str, Any]]) -> dict[str, Any]:
        """With no layer within every limit, utility first: the lowest bypass among the layers within the KL
        limit, else the layer whose removal changes harmless answers least."""
        gentle = [row for row in table if row["kl"] <= self.max_kl]
        return min(gentle, key=lambda row: row["bypass"]) if gentle else min(table, key=lambda row: row["kl"])

    def _fallback_rule(self) -> str:
        return "the lowest-bypass layer within the KL limit (else the lowest-KL layer)"

    def _exclusions(self, row: dict[str, Any]) -> list[str]:
        reasons = []
        if row["kl"] > self.max_kl:
            reasons.append(f"kl {row['kl']:.3g} > {self.max_kl:g} (removing it changes harmless answers)")
        if not row["induce"] > self.min_induce:
            reasons.append(f"induce {row['induce']:.3g} <= {self.min_induce:g} (adding it does not make "
                           "harmless prompts refuse)")
        return reasons

    def _no_layer_message(self, table: list[dict[str, Any]]) -> str:
        lines = [(f"No candidate layer is within the bypass selector's limits (kl <= {self.max_kl:g}, "
                 f"induce > {self.min_induce:g}):")]
        lines += [f"  layer {row['layer']} (bypass {row['bypass']:.3f}): {'; '.join(row['excluded_by'])}"
                  for row in table]
        lines.append(
            "What to try: more prompts; other candidate layers (steps.0.selector.candidates=[8, 10]); a "
            "relaxed limit (steps.0.selector.max_kl=0.2); or steps.0.selector.on_no_layer=best."
        )
        return "\n".join(lines)


def _validation_batches(data: FitData) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """Text batches of the validation prompts (the training ones when no split was held out)."""
    prompts = data.prompts
    harmful = prompts.get("positive_validation") or prompts["positive"]
    harmless = prompts.get("negative_validation") or prompts["negative"]
    return (list(data.services.text_batches(list(harmful.prompts))),
            list(data.services.text_batches(list(harmless.prompts))))


@torch.no_grad()
def _logits(model: Any, batches: list[dict[str, torch.Tensor]], plan: Plan | None) -> torch.Tensor:
    """Float32 decision logits of every batch, under `plan` when one is given."""
    if plan is None:
        return torch.cat([decision_logits(model, batch) for batch in batches])
    with plan.apply(model):
        return torch.cat([decision_logits(model, batch) for batch in batches])


def _added(data: FitData, layer: int) -> Plan:
    """The layer's raw difference-of-means vector added at its own layer, every position (the induce test)."""
    step = SteeringStep(
        {layer: data.directions.vectors[layer]},
        AddDirection(normalize=False),
        ConstantScaler(1.0),
        "all",
        "induce",
    )
    return Plan([step], model_info(data.model, data.layout, data.tokenizer))
