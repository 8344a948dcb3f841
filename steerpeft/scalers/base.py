"""How strongly a step steers, possibly per input row.

A scaler returns a strength for the hidden states of one layer: a float, or a
tensor broadcastable to [batch, seq, 1] when it depends on the input.  Scalers
that need to see another layer first (a condition) list it in `observed_layers`
and get `observe` calls; per-row decisions live in the forward context's
`row_state`, so cached decoding steps reuse what the prompt decided.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from steerpeft.component import Component
from steerpeft.registry import Registry

if TYPE_CHECKING:
    from steerpeft.fitting import FitData
    from steerpeft.forward_context import ForwardContext


class Scaler(Component):
    """Base class: `strength` is required, `calibrate` and `observe` optional."""

    def calibrate(self, data: FitData, layers: list[int]) -> None:
        """Learn thresholds or statistics from fit-time activations."""

    def observed_layers(self) -> set[int]:
        return set()

    def observe(self, layer: int, hidden: torch.Tensor, fc: ForwardContext) -> None:
        """Called with a layer's output before any steering at that layer."""

    def prepare(self, layer: int, like: torch.Tensor) -> None:
        """Convert per-layer tensors to `like`'s device and dtype ahead of `strength` (optional).

        Called on every forward, also where the step steers nothing (a prefill under
        `generated`), so compiled decoding steps never find a cache empty (a recompile).
        """

    def strength(self, hidden: torch.Tensor, layer: int, fc: ForwardContext) -> float | torch.Tensor:
        raise NotImplementedError

    def rows_steered(self, states: Mapping[int, torch.Tensor], layer: int, modality: torch.Tensor | None,
                     margin: float) -> torch.Tensor | None:
        """Bool [rows]: rows this scaler may give a nonzero strength at the decision position, or None (any
        row).

        Read from each row's unsteered decision-position states (`states[layer]`, [rows, hidden]) and its
        modality.  A threshold decision counts rows within `margin` of it as steered, so float noise between
        how the states were recorded and how the hook sees them never hides a steered row.  Evaluation uses
        it to reuse the unsteered answers of rows a decision-position plan cannot change.
        """
        return None

    def shift(self, hidden: torch.Tensor, layer: int, fc: ForwardContext) -> torch.Tensor | None:
        """An offset removed from the steered activation itself (re-centering 'shift' mode), or None."""
        return None

    def describe(self) -> dict[str, object]:
        """Human-readable parameters for reports and model cards."""
        return self.to_config()["params"]


SCALERS: Registry[Scaler] = Registry("scaler", base=Scaler)


def decision_states(hidden: torch.Tensor, fc: ForwardContext) -> torch.Tensor:
    """Each row's hidden state at its decision position, [batch, hidden] (prefill only)."""
    index = (fc.last_prompt_column - fc.first_column).clamp(min=0, max=hidden.shape[1] - 1)
    return hidden.gather(1, index.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])).squeeze(1)
