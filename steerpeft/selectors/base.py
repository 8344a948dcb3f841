"""Layer selectors decide where a step steers, keeping every score they computed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from steerpeft.component import Component
from steerpeft.errors import ConfigError
from steerpeft.registry import Registry, suggest

if TYPE_CHECKING:
    from steerpeft.fitting import FitData

NO_LAYER_CHOICES = ("fail", "best")
"""What a gated selector does when no candidate layer is within its limits: stop with the reasons, or
take its fallback layer anyway with a `SteeringWarning` (and say so in the table and the report)."""


def check_on_no_layer(selector: str, value: str) -> None:
    """Refuse an unknown `on_no_layer` choice, with the nearest valid one."""
    if value not in NO_LAYER_CHOICES:
        raise ConfigError(
            f"{selector} selector on_no_layer must be one of {', '.join(NO_LAYER_CHOICES)}, got "
            f"{value!r}.{suggest(str(value), list(NO_LAYER_CHOICES))}"
        )


@dataclass
class Selection:
    """Chosen layer(s) and the per-layer score table (one dict per candidate)."""

    layers: list[int]
    table: list[dict[str, Any]] = field(default_factory=list)


class LayerSelector(Component):
    """Base class: `candidates` says which layers to record, `select` picks among them."""

    def candidate_layers(self, num_layers: int) -> list[int]:
        raise NotImplementedError

    def select(self, data: FitData) -> Selection:
        raise NotImplementedError


SELECTORS: Registry[LayerSelector] = Registry("selector", base=LayerSelector)


def layer_range(spec: Any, num_layers: int) -> list[int]:
    """Candidate layers from a list of indices or `{start, stop}` fractions/indices of depth."""
    if spec is None or spec == "all":
        return list(range(num_layers))
    if isinstance(spec, int) and not isinstance(spec, bool):
        layers = [spec]
    elif hasattr(spec, "items"):
        unknown = set(spec) - {"start", "stop"}
        if unknown:
            raise ConfigError(f"candidate range takes 'start' and 'stop', not {sorted(unknown)}.")
        start, stop = spec.get("start", 0.0), spec.get("stop", 1.0)
        as_index = lambda v: (
            int(v) if isinstance(v, int) and not isinstance(v, bool) and v > 1
            else round(float(v) * num_layers)
        )
        layers = list(range(as_index(start), as_index(stop)))
    elif isinstance(spec, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in spec
    ):
        layers = list(spec)
    else:
        raise ConfigError(
            f"candidate layers must be 'all', a layer index, a list of indices or {{start, stop}}, got "
            f"{spec!r}."
        )
    if not layers:
        raise ConfigError(f"candidate layers {spec!r} select no layer of a {num_layers}-layer model.")
    for layer in layers:
        if not 0 <= layer < num_layers:
            raise ConfigError(f"layer {layer} is out of range: the model has layers 0..{num_layers - 1}.")
    return layers
