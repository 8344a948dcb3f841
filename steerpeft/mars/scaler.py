"""MARS trust-region strength with a ReLU gate (see MARS.md, step 4).

For each row, the re-centred state h~ = h - delta^m (m = the row's modality)
is placed on the harmless->harmful segment: t = (<h~,u> - p-) / s^m, where the
span s^m = p+ - p- (MARS.md as written), or, when the fit measured it (recipe
`media.segment: modality`), the re-centred harmful centroid of the same text
prompts with neutral media of modality m: s^m = <mu+^m - delta^m, u> - p-.
Rows with t <= tau get strength exactly 0 and so stay bit-for-bit unchanged.

- `form="traversal"` (default): h' = h + g * ReLU(p- + T s^m - <h~,u>) * u: the state is raised to
  level T along u, never lowered.  The target T (`target`): 1, the harmful centroid (MARS.md); a
  number; or read off the fit at calibration (`calibrated`: where the model's own first token turns
  to refusal on the fit harmful prompts; `refused_centroid`: the centroid of the fit harmful prompts
  it refuses; see `steerpeft.mars.target`).  The gate g (`gate`): `ramp`, clip((t - tau) / (1 - tau),
  0, 1) (MARS.md), or `hard`, 1 as soon as t > tau.
- `form="beta"`: h' = h + min(beta * ReLU(t - tau), rho) * (s^m / s^text) * r.

`recenter`: "measure" (only the gate sees h~), "shift" (h itself is re-centred
too, at steered positions whose gate opens) or "none" (offsets ignored, for
ablations).  In every mode a closed gate leaves the row bit-for-bit unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from steerpeft.errors import ConfigError
from steerpeft.mars.calibration import LayerRegion, layer_region, neutral_statistics
from steerpeft.mars.target import TARGET_MODES, layer_targets
from steerpeft.registry import suggest
from steerpeft.scalers.base import SCALERS, Scaler

if TYPE_CHECKING:
    from steerpeft.fitting import FitData
    from steerpeft.forward_context import ForwardContext

RECENTER_MODES = ("measure", "shift", "none")
FORMS = ("traversal", "beta")
GATES = ("ramp", "hard")


@SCALERS.register("trust_region")
@dataclass
class TrustRegionScaler(Scaler):
    """Adaptive, ReLU-gated strength; pair it with `add` (normalize: true)."""

    form: str = "traversal"
    beta: float = 2.0
    rho: float = 1.5
    tau: float | None = None
    tau_quantile: float = 0.95
    recenter: str = "measure"
    target: float | str = 1.0
    target_share: float = 0.95
    gate: str = "ramp"
    regions: dict[int, LayerRegion] = field(default_factory=dict, init=False, repr=False)
    _device_cache: dict[Any, tuple[torch.Tensor, ...]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ConfigError(f"trust_region form must be one of {FORMS}, got {self.form!r}.")
        if self.recenter not in RECENTER_MODES:
            raise ConfigError(
                f"trust_region recenter must be one of {RECENTER_MODES}, got {self.recenter!r}."
            )
        if not 0.0 < self.tau_quantile < 1.0:
            raise ConfigError(f"tau_quantile must be in (0, 1), got {self.tau_quantile}.")
        if self.gate not in GATES:
            raise ConfigError(f"trust_region gate must be one of {GATES}, got {self.gate!r}."
                              f"{suggest(str(self.gate), list(GATES))}")
        if isinstance(self.target, str):
            if self.target not in TARGET_MODES:
                raise ConfigError("trust_region target must be a number (1 = the harmful centroid) or one of "
                                  f"{', '.join(TARGET_MODES)}, got "
                                  f"{self.target!r}.{suggest(self.target, list(TARGET_MODES))}")
        elif isinstance(self.target, bool) or not isinstance(self.target, (int, float)) or not \
                (math.isfinite(self.target) and self.target > 0):
            raise ConfigError("trust_region target must be a positive number of spans (1 = the harmful "
                              f"centroid), got {self.target!r}.")
        else:
            self.target = float(self.target)
        if not 0.0 < self.target_share <= 1.0:
            raise ConfigError(f"trust_region target_share must be in (0, 1], got {self.target_share}.")
        if self.tau is not None and not math.isfinite(self.tau):
            raise ConfigError(
                f"tau must be a finite number (0 = harmless centroid, 1 = harmful), got {self.tau}."
            )

    # -- fit -----------------------------------------------------------------
    def calibrate(self, data: FitData, layers: list[int]) -> None:
        stats = neutral_statistics(data)
        for layer in layers:
            self.regions[layer] = layer_region(data, stats, layer)
        if self.tau is None:
            self.tau = stats.tau(self.regions[layers[0]], layers[0], self.tau_quantile)
        if isinstance(self.target, str):
            for layer, fit in layer_targets(data, self.regions, self).items():
                self.regions[layer].target = fit.target
        else:
            for region in self.regions.values():
                region.target = float(self.target)
        self._device_cache.clear()

    # -- inference ---------------------------------------------------------------
    def _tensors(self, layer: int, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(unit in h's dtype, offsets float32, offsets' projections, spans), cached per device and dtype."""
        key = (layer, hidden.device, hidden.dtype)
        cached = self._device_cache.get(key)
        if cached is None:
            region = self._region(layer)
            unit = region.unit.to(hidden.device, torch.float32)
            offsets = region.offsets.to(hidden.device, torch.float32)
            spans = region.span_table().to(hidden.device)
            cached = (unit.to(hidden.dtype), offsets, offsets @ unit, spans)
            self._device_cache[key] = cached
        return cached

    def prepare(self, layer: int, like: torch.Tensor) -> None:
        self._tensors(layer, like)

    def _region(self, layer: int) -> LayerRegion:
        region = self.regions.get(layer)
        if region is None or self.tau is None:
            raise ConfigError(f"trust_region scaler is not calibrated for layer {layer}: fit the plan first.")
        return region

    def gate_position(
        self, hidden: torch.Tensor, layer: int, fc: ForwardContext | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t, <h~,u>, span) per position, float32 [batch, seq] (span [batch, 1] or a 0-d tensor)."""
        unit, _, offset_projections, spans = self._tensors(layer, hidden)
        region = self._region(layer)
        projection = torch.matmul(hidden, unit).float()
        span = spans[0]
        if self.recenter != "none" and fc is not None and fc.modality is not None:
            projection = projection - offset_projections[fc.modality].unsqueeze(-1)
            span = spans[fc.modality].unsqueeze(-1)
        t = (projection - region.p_minus) / span
        return t, projection, span

    def gate_of_states(self, layer: int, states: torch.Tensor, modality: torch.Tensor | None) -> torch.Tensor:
        """t of recorded decision states [rows, hidden] (float32), as the hook computes it for those rows.

        `modality`: each row's `Modality` ([rows] long, or one value), None for a text-only model.
        """
        region = self._region(layer)
        unit = region.unit.to(states.device, torch.float32)
        projection = states.float() @ unit
        spans = region.span_table().to(states.device)
        if self.recenter != "none" and modality is not None:
            index = torch.as_tensor(modality, device=states.device).long().expand(states.shape[0])
            projection = projection - (region.offsets.to(states.device, torch.float32) @ unit)[index]
            return (projection - region.p_minus) / spans[index]
        return (projection - region.p_minus) / spans[0]

    def rows_steered(self, states: Mapping[int, torch.Tensor], layer: int, modality: torch.Tensor | None,
                     margin: float) -> torch.Tensor | None:
        if layer not in states:
            return None
        return (self.gate_of_states(layer, states[layer], modality) > float(self.tau) - margin).cpu()  # type: ignore[arg-type]

    def strength(self, hidden: torch.Tensor, layer: int, fc: ForwardContext) -> torch.Tensor:
        region = self._region(layer)
        tau = float(self.tau)  # type: ignore[arg-type]
        t, projection, span = self.gate_position(hidden, layer, fc)
        if self.form == "traversal":
            # tau >= T means the gate opens only past the target, where ReLU(p- + T s - <h~,u>) is 0.
            if self.gate == "hard":
                gate = (t > tau).to(t.dtype)
            else:
                gate = ((t - tau) / max(1.0 - tau, 1e-6)).clamp(0.0, 1.0)
            value = gate * torch.relu(region.p_minus + region.target * span - projection)
        else:
            scale = region.raw_norm / (region.p_plus - region.p_minus)
            value = torch.clamp(self.beta * torch.relu(t - tau), max=self.rho) * span * scale
        return value.unsqueeze(-1).to(hidden.dtype)

    def shift(self, hidden: torch.Tensor, layer: int, fc: ForwardContext) -> torch.Tensor | None:
        """`recenter: shift`: delta^m at positions whose gate opens (t > tau), exactly 0 elsewhere.

        A closed gate leaves the row bit-for-bit unchanged in every recenter mode: only rows the
        gate steers are moved into the text frame before the update.
        """
        if self.recenter != "shift" or fc.modality is None:
            return None
        _, offsets, _, _ = self._tensors(layer, hidden)
        t, _, _ = self.gate_position(hidden, layer, fc)
        opens = (t > float(self.tau)).unsqueeze(-1)  # type: ignore[arg-type]
        return offsets[fc.modality].unsqueeze(1).to(hidden.dtype) * opens.to(hidden.dtype)

    # -- persistence ---------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for layer, region in self.regions.items():
            state[f"{layer}.unit"] = region.unit.float().cpu()
            state[f"{layer}.offsets"] = region.offsets.float().cpu()
            state[f"{layer}.centroids"] = torch.tensor(
                [region.p_plus, region.p_minus, region.raw_norm], dtype=torch.float64
            )
            state[f"{layer}.target"] = torch.tensor([region.target], dtype=torch.float64)
            if region.spans is not None:
                state[f"{layer}.spans"] = region.spans.float().cpu()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        layers = {int(key.split(".")[0]) for key in state}
        for layer in layers:
            p_plus, p_minus, raw_norm = state[f"{layer}.centroids"].tolist()
            target = state.get(f"{layer}.target")  # plans written before targets existed end at the centroid
            self.regions[layer] = LayerRegion(
                state[f"{layer}.unit"], p_plus, p_minus, raw_norm, state[f"{layer}.offsets"],
                state.get(f"{layer}.spans"), 1.0 if target is None else float(target[0]),
            )
        self._device_cache.clear()

    def describe(self) -> dict[str, object]:
        info: dict[str, object] = dict(self.to_config()["params"])
        for layer, region in self.regions.items():
            info[f"layer_{layer}"] = {
                "p_plus": region.p_plus, "p_minus": region.p_minus, "target": region.target,
                "offset_norms": region.offsets.norm(dim=1).tolist(), "spans": region.span_table().tolist(),
            }
        return info
