"""Recording residual-stream activations at chosen layers and positions.

Hooks accumulate float32 sums (and, if asked, one mean vector per prompt)
while the batch runs, and the forward pass is cut short after the deepest
layer needed, so recording costs less than a full forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from steerpeft.activations import Activations
from steerpeft.architectures import ModelLayout, decoder_layers
from steerpeft.errors import DataError
from steerpeft.positions import Positions
from steerpeft.session import acquire_session, active_session, release_session


class _StopForward(Exception):
    """Raised by the deepest hook to end a recording forward pass early."""


def layer_output(output: Any) -> torch.Tensor:
    """The hidden states of a decoder layer's output (a tensor or a tuple led by one)."""
    return output[0] if isinstance(output, tuple) else output


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class ActivationRecorder:
    """Accumulates activations of `layers` at `positions` over many batches."""

    def __init__(
        self,
        model: nn.Module,
        layout: ModelLayout,
        layers: list[int],
        positions: Positions,
        *,
        keep_per_prompt: bool = True,
        stop_early: bool = True,
    ) -> None:
        if not layers:
            raise DataError("No layers to record: give at least one layer index.")
        for layer in layers:
            layout.layer_path(layer)  # validates the index
        self.model, self.layout = model, layout
        self.layers = sorted(set(layers))
        self.positions = positions
        self.keep_per_prompt = keep_per_prompt
        self.stop_early = stop_early
        hidden = layout.hidden_size
        self.sums = {layer: torch.zeros(hidden, dtype=torch.float32) for layer in self.layers}
        self.count = 0
        self.num_prompts = 0
        self._per_prompt: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        self._batch_sums: dict[int, torch.Tensor] = {}
        self._batch_rows: dict[int, torch.Tensor] = {}
        self._batch_count: torch.Tensor | None = None

    def _hook(self, layer: int) -> Callable[..., None]:
        deepest = self.layers[-1]

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            session = active_session(self.model)
            fc = session.context if session is not None else None
            if fc is None:
                raise RuntimeError("recording hook ran without a forward context")
            hidden = layer_output(output)
            fc = fc.on(hidden.device)
            mask = fc.mask_for(self.positions)
            if mask is not None:
                weights = mask.to(torch.float32).unsqueeze(-1)
                states = hidden.float() * weights
                self._batch_sums[layer] = states.sum(dim=(0, 1))
                if self._batch_count is None:
                    self._batch_count = mask.sum()
                if self.keep_per_prompt:
                    self._batch_rows[layer] = states.sum(1) / weights.sum(1).clamp_min(1.0)
            if self.stop_early and layer == deepest:
                raise _StopForward

        return hook

    @torch.no_grad()
    def record(
        self, batches: Iterable[dict[str, torch.Tensor]], on_batch: Callable[[int], None] | None = None
    ) -> Activations:
        """Run every batch and return the accumulated activations."""
        layout = self.layout
        session = acquire_session(self.model, layout.image_token_id, layout.video_token_id)
        modules = decoder_layers(self.model, layout)
        handles = [modules[layer].register_forward_hook(self._hook(layer)) for layer in self.layers]
        try:
            for batch in batches:
                self._run(batch)
                if on_batch is not None:
                    on_batch(int(next(iter(batch.values())).shape[0]))
        finally:
            for handle in handles:
                handle.remove()
            release_session(self.model)
        del session
        return self.result()

    def _run(self, batch: dict[str, torch.Tensor]) -> None:
        self._batch_sums, self._batch_rows, self._batch_count = {}, {}, None
        extra: dict[str, Any] = {"use_cache": False}
        if _accepts_logits_to_keep(self.model):
            extra["logits_to_keep"] = 1  # the recorder never reads logits: skip the vocabulary projection
        try:
            self.model(**batch, **extra)
        except _StopForward:
            pass
        if self._batch_count is None:
            raise DataError(
                f"Positions {self.positions} selected nothing in this batch; check the position spec."
            )
        rows = int(next(iter(batch.values())).shape[0])
        for layer in self.layers:
            self.sums[layer] += self._batch_sums[layer].cpu()
            if self.keep_per_prompt:
                self._per_prompt[layer].append(self._batch_rows[layer].cpu())
        self.count += int(self._batch_count)
        self.num_prompts += rows

    def result(self) -> Activations:
        per_prompt = None
        if self.keep_per_prompt and self.num_prompts:
            per_prompt = {layer: torch.cat(rows) for layer, rows in self._per_prompt.items()}
        return Activations(list(self.layers), dict(self.sums), self.count, self.num_prompts, per_prompt)
