"""Reference steering in plain PyTorch: hooks that know token positions from the inputs alone.

The generation-path tests steer a model twice, once with steerpeft and once with these hooks,
and compare logits.  Nothing here reads steerpeft's session.  Each call's `CallLayout` is
built by the test from the inputs it made (padding, prompt width, the columns already cached
before the call, how many rows each prompt becomes), and `ReferenceSteering` counts columns
itself: in a cached call each forward starts where the previous one ended, in a cache-less
call every forward re-feeds the sequence from column 0.

Position specs, for one call whose input holds `width` columns of which the first `past` are
already in the cache:
- prompt: the call's new real tokens, columns past..width-1;
- decision: each row's last real prompt token;
- generated: columns >= width;  first_generated:n: width..width+n-1;
- all: every real token the call feeds (cached columns are never fed again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

POSITION_SPECS = ("all", "prompt", "decision", "generated", "first_generated:1", "first_generated:3")

Edit = Callable[[torch.Tensor, "CallLayout"], torch.Tensor]
"""Steered hidden states [rows, seq, hidden] at every position; the hook keeps the chosen ones."""


@dataclass(frozen=True)
class CallLayout:
    """Where one call's prompt sits, known from the inputs the test built.

    `real` [rows, width - past] bool: which of the call's new prompt columns are real tokens;
    `modality` [rows]: 0 text, 1 image, 2 video (None for text models).
    """

    real: torch.Tensor
    past: int = 0
    modality: torch.Tensor | None = None

    @classmethod
    def of(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, past: int = 0,
           modality: torch.Tensor | None = None, copies: int = 1) -> CallLayout:
        """The layout of a call given `input_ids` (the whole sequence, its first `past` columns cached).

        `copies` rows per prompt, as beam search and `num_return_sequences` expand a batch.
        """
        mask = (
            torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )
        real = mask[:, past:].repeat_interleave(copies, dim=0)
        if modality is not None:
            modality = modality.repeat_interleave(copies, dim=0)
        return cls(real, past, modality)

    @property
    def width(self) -> int:
        return self.past + self.real.shape[1]

    @property
    def decision(self) -> torch.Tensor:
        """[rows] column of each row's last real prompt token."""
        index = torch.arange(self.real.shape[1]).expand_as(self.real)
        return self.past + torch.where(self.real, index, -1).amax(dim=1)

    def select(self, spec: str, columns: torch.Tensor) -> torch.Tensor:
        """[rows, seq] bool: the positions `spec` steers among absolute `columns` [seq]."""
        col = columns[None, :].expand(self.real.shape[0], -1)
        in_prompt = (col >= self.past) & (col < self.width)
        index = (col - self.past).clamp(0, self.real.shape[1] - 1)
        real = torch.where(in_prompt, self.real.gather(1, index), col >= self.width)
        kind, _, n = spec.partition(":")
        if kind == "all":
            return real
        if kind == "prompt":
            return real & in_prompt
        if kind == "decision":
            return col == self.decision[:, None]
        if kind == "generated":
            return col >= self.width
        if kind == "first_generated":
            return (col >= self.width) & (col < self.width + int(n))
        raise ValueError(f"unknown position spec {spec!r}")


def add_edit(vector: torch.Tensor, alpha: float) -> Edit:
    """ActAdd: h + alpha * v."""
    return lambda h, layout: h + alpha * vector


def ablate_edit(direction: torch.Tensor, alpha: float = 1.0) -> Edit:
    """Directional ablation: h - alpha * <h, u> u."""
    unit = direction / direction.norm()
    return lambda h, layout: h - alpha * (h @ unit)[..., None] * unit


def mars_edit(unit: torch.Tensor, p_plus: float, p_minus: float, offsets: torch.Tensor, tau: float) -> Edit:
    """MARS.md step 4, traversal form with `recenter: measure`, at every position (the hook picks).

    h~ = h - delta_m (m = the row's modality), t = (<h~,u> - p-) / (p+ - p-),
    h' = h + clip((t - tau) / (1 - tau), 0, 1) * relu(p+ - <h~,u>) * u.  Needs tau < 1.
    """
    assert tau < 1.0, "the reference writes the gate for tau < 1 only"

    def edit(h: torch.Tensor, layout: CallLayout) -> torch.Tensor:
        rows = h.shape[0]
        delta = offsets[layout.modality] if layout.modality is not None else torch.zeros(rows, h.shape[-1])
        projection = (h - delta[:, None, :]) @ unit
        t = (projection - p_minus) / (p_plus - p_minus)
        gate = ((t - tau) / (1.0 - tau)).clamp(0.0, 1.0)
        return h + (gate * torch.relu(p_plus - projection))[..., None] * unit

    return edit


def decoder_layers_of(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of the tiny models used here, found by their attribute paths."""
    inner = model.model
    language = getattr(inner, "language_model", inner)
    return language.layers


class ReferenceSteering:
    """Steers `edits[layer]` at the positions `spec` picks in one call laid out as `layout`.

    `cached`: the call feeds each token once (a cached `generate` or decoding loop); otherwise every
    forward re-feeds the whole sequence (`use_cache=False`).  Use as a context manager.
    """

    def __init__(
        self, model: nn.Module, edits: dict[int, Edit], spec: str, layout: CallLayout, cached: bool
    ) -> None:
        self.model, self.edits, self.spec, self.layout, self.cached = model, edits, spec, layout, cached
        self.start = 0
        self.next = layout.past
        self.handles: list[Any] = []

    def __enter__(self) -> ReferenceSteering:  # noqa: PYI034 (final class)
        self.handles.append(self.model.register_forward_pre_hook(self._count, with_kwargs=True))
        layers = decoder_layers_of(self.model)
        for layer in self.edits:
            self.handles.append(layers[layer].register_forward_hook(self._steer(layer)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _count(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        tokens = kwargs.get("input_ids", args[0] if args else None)
        if tokens is None:
            tokens = kwargs["inputs_embeds"]
        seq = tokens.shape[1]
        self.start = self.next if self.cached else 0
        self.next = self.start + seq

    def _steer(self, layer: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            columns = torch.arange(self.start, self.start + hidden.shape[1])
            chosen = self.layout.select(self.spec, columns)
            steered = torch.where(chosen[..., None], self.edits[layer](hidden, self.layout), hidden)
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        return hook
