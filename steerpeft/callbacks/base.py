"""Callbacks: observe the steerer's lifecycle without touching its loop.

Hooks are called in this order during `Steerer.fit`:

1. `on_fit_start(steerer, model)`
2. for each recorded split ("positive", "negative", "positive_validation", ...):
   `on_record_start(steerer, split, total)`, `on_batch_end(steerer, split, rows)` per batch,
   `on_record_end(steerer, split, activations)`
3. `on_directions_computed(steerer, directions)`
4. `on_layer_scored(steerer, layer, scores)` per candidate layer (sweeps only)
5. `on_layer_selected(steerer, selection)`
6. `on_scaler_calibrated(steerer, scaler)`
7. `on_fit_end(steerer, plan)`

and around `Steerer.apply`: `on_apply_start(steerer, plan, model)` / `on_apply_end(steerer, plan, model)`.
Every hook is a no-op by default; override the ones you need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from steerpeft.registry import Registry

if TYPE_CHECKING:
    from steerpeft.activations import Activations, Directions
    from steerpeft.plan import Plan
    from steerpeft.scalers import Scaler
    from steerpeft.selectors import Selection
    from steerpeft.steerer import Steerer


class Callback:
    """Base class with a no-op method per lifecycle event."""

    def on_fit_start(self, steerer: Steerer, model: Any) -> None: ...

    def on_record_start(self, steerer: Steerer, split: str, total: int) -> None: ...

    def on_batch_end(self, steerer: Steerer, split: str, rows: int) -> None: ...

    def on_record_end(self, steerer: Steerer, split: str, activations: Activations) -> None: ...

    def on_directions_computed(self, steerer: Steerer, directions: Directions) -> None: ...

    def on_layer_scored(self, steerer: Steerer, layer: int, scores: dict[str, Any]) -> None: ...

    def on_layer_selected(self, steerer: Steerer, selection: Selection) -> None: ...

    def on_scaler_calibrated(self, steerer: Steerer, scaler: Scaler) -> None: ...

    def on_fit_end(self, steerer: Steerer, plan: Plan) -> None: ...

    def on_apply_start(self, steerer: Steerer, plan: Plan, model: Any) -> None: ...

    def on_apply_end(self, steerer: Steerer, plan: Plan, model: Any) -> None: ...


CALLBACKS: Registry[Callback] = Registry("callback", base=Callback)
