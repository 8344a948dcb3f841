"""MARS evaluation: prompt sets per modality, steering conditions with ablations, gate values.

Sets are harmful and harmless prompts, each text-only and with neutral media
for every modality the model takes ("harmful/text", "harmless/image", ...).
Conditions are the unsteered model, the fitted plan, and ablations that each
switch one MARS part off: no re-centering, a fixed strength instead of the
gate, all tokens instead of the first generated token.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from steerpeft.architectures import resolve_layout
from steerpeft.inputs.batches import available_modalities, modality_batches
from steerpeft.inputs.modality import Modality
from steerpeft.inputs.text import model_device
from steerpeft.interventions import AddDirection
from steerpeft.mars.scaler import TrustRegionScaler
from steerpeft.plan import Plan, SteeringStep
from steerpeft.positions import AllTokens, DecisionPosition
from steerpeft.recording import ActivationRecorder
from steerpeft.scalers import ConstantScaler

Condition = Callable[[], AbstractContextManager[Any]] | None


def mars_step(plan: Plan) -> SteeringStep | None:
    """The plan's (first) trust-region step, if any."""
    return next((s for s in plan.steps if isinstance(s.scaler, TrustRegionScaler)), None)


def eval_sets(model: Any, processor: Any, harmful: Sequence[str], harmless: Sequence[str], *,
              modalities: Sequence[str] | None = None, batch_size: int = 16, seed: int = 0,
              video_frames: int = 4) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Input batches per set name `"<harmful|harmless>/<modality>"`; media rows get neutral media."""
    device = model_device(model)
    chosen = list(modalities) if modalities else available_modalities(model, processor)
    sets: dict[str, list[dict[str, torch.Tensor]]] = {}
    for modality in chosen:
        for label, prompts in (("harmful", harmful), ("harmless", harmless)):
            sets[f"{label}/{modality}"] = list(
                modality_batches(processor, list(prompts), modality, batch_size=batch_size, seed=seed + 7,
                                 video_frames=video_frames, device=device)
            )
    return sets


def _variant(plan: Plan, change: Callable[[SteeringStep], SteeringStep]) -> Plan:
    steps = [change(step) if isinstance(step.scaler, TrustRegionScaler) else step for step in plan.steps]
    return Plan(steps, plan.model_info, plan.metadata)


def without_recentering(plan: Plan) -> Plan:
    """The same plan with offsets ignored by the gate (tau unchanged)."""

    def change(step: SteeringStep) -> SteeringStep:
        scaler = copy.deepcopy(step.scaler)
        scaler.recenter = "none"
        scaler._device_cache.clear()
        return SteeringStep(step.directions, step.intervention, scaler, step.positions, step.name)

    return _variant(plan, change)


def fixed_strength(plan: Plan) -> Plan:
    """No gate: every input gets the centroid gap p+ - p- along u at the decision position."""

    def change(step: SteeringStep) -> SteeringStep:
        layer = step.layers[0]
        region = step.scaler.regions[layer]
        return SteeringStep(
            step.directions, AddDirection(normalize=True), ConstantScaler(region.p_plus - region.p_minus),
            step.positions, step.name,
        )

    return _variant(plan, change)


def at_all_tokens(plan: Plan) -> Plan:
    """The same gated update at every token instead of the first generated one."""

    def change(step: SteeringStep) -> SteeringStep:
        return SteeringStep(step.directions, step.intervention, step.scaler, AllTokens(), step.name)

    return _variant(plan, change)


def conditions(plan: Plan, model: Any, name: str = "steered", ablations: bool = True) -> dict[str, Condition]:
    """Condition name -> steering context factory (None = unsteered)."""
    result: dict[str, Condition] = {"unsteered": None, name: lambda: plan.apply(model)}
    if ablations and mars_step(plan) is not None:
        for label, variant in (
            ("no re-centering", without_recentering(plan)), ("fixed strength", fixed_strength(plan)),
            ("all tokens", at_all_tokens(plan)),
        ):
            result[f"{name} ({label})"] = lambda variant=variant: variant.apply(model)
    return result


@torch.no_grad()
def decision_states(model: Any, batches: list[dict[str, torch.Tensor]], layer: int) -> torch.Tensor:
    """Each row's unsteered decision-position state [rows, hidden] at `layer` (float32)."""
    recorder = ActivationRecorder(model, resolve_layout(model), [layer], DecisionPosition())
    return recorder.record(batches).prompts(layer)


@torch.no_grad()
def gate_values(plan: Plan, model: Any, batches: list[dict[str, torch.Tensor]], modality: str,
                recenter: bool = True) -> torch.Tensor:
    """t of each row at the plan's MARS layer (decision position), as the gate sees it."""
    step = mars_step(plan)
    if step is None:
        raise ValueError("The plan has no trust-region step, so it has no gate values.")
    layer = step.layers[0]
    row = torch.tensor(int(Modality.named(modality))) if recenter else None
    return step.scaler.gate_of_states(layer, decision_states(model, batches, layer), row)
