"""Prototype of the MARS options of issue 14 as one Scaler subclass (research only, not the package).

Notation (all at the decision position, float32): for a layer l, `u_l` unit direction, `p-_l` the
harmless centroid's projection, `s_l` the span (p+_l - p-_l = |mu+_l - mu-_l| when u_l is the
mean-difference direction), t_l(h) = (<h,u_l> - p-_l) / s_l.

Gate (decided once per row at prefill, at `gate_layer`, kept in fc.row_state):
    g = clip((t_gate - tau) / ramp, 0, 1),  ramp = 1 - tau by default (MARS.md), or a fixed width,
where t_gate is t at the gate layer, or the mean of t over `gate_layers` (a band of layers).
Strength at each steered layer l (unit u_l; AddDirection(normalize=True) adds strength * u_l):
    traversal: a_l = g * ReLU(p-_l + T * s_l - <h,u_l>)         (T = target in t units; 1 = MARS.md)
    beta:      a_l = min(beta * ReLU(t_gate - tau), rho) * s_l
Decoding steps (positions DecisionPlus(n) with n > 0): `hold="same"` adds the same a_l as at the
decision position; `hold="traverse"` recomputes g * ReLU(target - <h,u_l>) at each steered token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from steerpeft.positions import Positions
from steerpeft.scalers.base import Scaler, decision_states


@dataclass(frozen=True)
class DecisionPlus(Positions):
    """The decision position plus the first `n` generated tokens of each row (n = 0: decision only)."""

    kind: ClassVar[str] = "decision_plus"
    n: int = 0

    def mask(self, fc):  # noqa: ANN001
        chosen = None
        if not (fc.after_prompt or fc.first_column >= fc.prompt_width):
            chosen = fc.columns == fc.last_prompt_column[:, None]
        end = fc.prompt_width + self.n
        if self.n > 0 and not (fc.last_column < fc.prompt_width or fc.first_column >= end):
            generated = fc.real_tokens & (fc.columns >= fc.prompt_width) & (fc.columns < end)
            chosen = generated if chosen is None else (chosen | generated)
        return chosen

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n}


@dataclass
class Region:
    unit: torch.Tensor  # [H] float32
    p_minus: float
    span: float
    target: float = 1.0  # traversal end, in t units

    def t(self, states: torch.Tensor) -> torch.Tensor:
        return (states.float() @ self.unit - self.p_minus) / self.span


@dataclass
class OptionScaler(Scaler):
    gate_layers: list[int] = field(default_factory=list)
    gate_regions: dict[int, Region] = field(default_factory=dict)
    regions: dict[int, Region] = field(default_factory=dict)  # steered layers
    tau: float = 0.0
    ramp: float | None = None  # None = 1 - tau
    form: str = "traversal"
    beta: float = 2.0
    rho: float = 1.5
    hold: str = "same"

    def observed_layers(self) -> set[int]:
        return {max(self.gate_layers)}

    def gate(self, t: torch.Tensor) -> torch.Tensor:
        ramp = self.ramp if self.ramp is not None else max(1.0 - self.tau, 1e-6)
        if ramp <= 0:
            return (t > self.tau).float()
        return ((t - self.tau) / ramp).clamp(0.0, 1.0)

    def observe(self, layer: int, hidden: torch.Tensor, fc) -> None:  # noqa: ANN001
        """Gate layers' decision states are collected as they pass; the gate is decided at the last one."""
        pass

    def collect(self, layer: int, hidden: torch.Tensor, fc) -> None:  # noqa: ANN001
        if fc.is_continuation or layer not in self.gate_regions:
            return
        t = self.gate_regions[layer].t(decision_states(hidden, fc))
        fc.row_state.setdefault((id(self), "t"), {})[layer] = t
        if layer == max(self.gate_layers):
            ts = fc.row_state[(id(self), "t")]
            t_gate = torch.stack([ts[l] for l in self.gate_layers]).mean(0)
            fc.row_state[(id(self), "tg")] = t_gate
            fc.row_state[(id(self), "g")] = self.gate(t_gate)

    def strength(self, hidden: torch.Tensor, layer: int, fc) -> torch.Tensor:  # noqa: ANN001
        region = self.regions[layer]
        unit = region.unit.to(hidden.device)
        if not fc.is_continuation:
            g = fc.row_state[(id(self), "g")]
            if self.form == "traversal":
                projection = decision_states(hidden, fc).float() @ unit
                value = g * torch.relu(region.p_minus + region.target * region.span - projection)
            else:
                t_gate = fc.row_state[(id(self), "tg")]
                value = torch.clamp(self.beta * torch.relu(t_gate - self.tau), max=self.rho) * region.span
            fc.row_state[(id(self), layer)] = value
            return value.view(-1, 1, 1).to(hidden.dtype)
        if self.hold == "same":
            return fc.row_state[(id(self), layer)].view(-1, 1, 1).to(hidden.dtype)
        g = fc.row_state[(id(self), "g")].view(-1, 1)
        projection = hidden.float() @ unit
        value = g * torch.relu(region.p_minus + region.target * region.span - projection)
        return value.unsqueeze(-1).to(hidden.dtype)


class _GateObserver(Scaler):
    """Strength 0 everywhere; only watches the gate layers (installed as its own step so every gate layer
    is hooked, even when it is not steered)."""

    def __init__(self, owner: OptionScaler) -> None:
        self.owner = owner

    def observed_layers(self) -> set[int]:
        return set(self.owner.gate_layers)

    def observe(self, layer: int, hidden: torch.Tensor, fc) -> None:  # noqa: ANN001
        self.owner.collect(layer, hidden, fc)

    def strength(self, hidden, layer, fc):  # noqa: ANN001
        return 0.0


_INFO: dict[str, Any] = {}


def build_plan(scaler: OptionScaler, directions: dict[int, torch.Tensor], hold_tokens: int = 0):
    """A Plan: a silent observer step (gate) then the steering step at `scaler.regions`' layers."""
    from steerpeft.interventions import AddDirection
    from steerpeft.plan import Plan, SteeringStep
    from steerpeft.scalers import ConstantScaler

    from research import common as C

    model, tok = C.load()
    if not _INFO:
        from steerpeft.architectures import resolve_layout
        from steerpeft.steerer import model_info

        _INFO.update(model_info(model, resolve_layout(model), tok))
    first = min(scaler.gate_layers)
    observer = SteeringStep({first: directions[first]}, AddDirection(normalize=True), _GateObserver(scaler),
                            DecisionPlus(0), "gate")
    step = SteeringStep({l: directions[l] for l in scaler.regions}, AddDirection(normalize=True), scaler,
                        DecisionPlus(hold_tokens), "mars")
    assert min(scaler.regions) >= max(scaler.gate_layers), "steered layers must come at or after the gate layers"
    return Plan([observer, step], dict(_INFO))
