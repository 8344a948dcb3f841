"""`ForwardContext`: what the layer hooks know about the forward pass in flight.

Published by the model's `SteeringSession` (`steerpeft.session`) before any layer runs: for every
row of the chunk, its absolute columns, which positions are real tokens, where the prompt ends and
which modality the row carries.  Position specs and scalers read it; nothing here reads a model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Lazy = int | Callable[[], int]


class ForwardContext:
    """What the layer hooks need to know about the forward pass in flight.

    Tensors: `columns` [seq] (absolute column of each position of this chunk),
    `real_tokens` [batch, seq] bool, `last_prompt_column` [batch] long,
    `modality` [batch] long (a `Modality` value per row) or None.

    Two flags answer the common questions without a kernel, a host sync or a
    Python int: `every_token_real` (the chunk holds no padding: no mask was given,
    or a cached `generate` step, whose new tokens are always attended) and
    `after_prompt` (a cached decoding step: nothing of the prompt is in it).  The
    ints (`first_column`, `prompt_width`) and `columns` are computed only when a
    position spec asks for them, so `torch.compile` does not specialise a decoding
    step on its column unless the plan needs it.  On a compiled decoding step
    `generated_offset` holds the chunk's first column minus the prompt width as a
    0-d long tensor on the device (None elsewhere): specs that count generated
    tokens compare it there instead of reading `first_column` (a host sync).
    """

    def __init__(
        self, *, batch: int, seq: int, device: torch.device, first_column: Lazy, prompt_width: Lazy,
        real_tokens: torch.Tensor | None, last_prompt_column: torch.Tensor, is_continuation: bool,
        after_prompt: bool = False, every_token_real: bool = False, modality: torch.Tensor | None = None,
        row_state: dict[Any, torch.Tensor] | None = None, generated_offset: torch.Tensor | None = None,
    ) -> None:
        self.batch, self.seq, self.device = batch, seq, device
        self.generated_offset = generated_offset
        self._first_column, self._prompt_width = first_column, prompt_width
        self._real_tokens = real_tokens
        self._columns: torch.Tensor | None = None
        self.last_prompt_column = last_prompt_column
        self.is_continuation = is_continuation
        self.after_prompt = after_prompt
        self.every_token_real = every_token_real
        self.modality = modality
        self.row_state: dict[Any, torch.Tensor] = {} if row_state is None else row_state
        self._mask_cache: dict[Any, torch.Tensor | None] = {}
        self._views: dict[torch.device, ForwardContext] = {}

    @property
    def first_column(self) -> int:
        if callable(self._first_column):
            self._first_column = int(self._first_column())
        return self._first_column

    @property
    def prompt_width(self) -> int:
        if callable(self._prompt_width):
            self._prompt_width = int(self._prompt_width())
        return self._prompt_width

    @property
    def last_column(self) -> int:
        return self.first_column + self.seq - 1

    @property
    def columns(self) -> torch.Tensor:
        if self._columns is None:
            self._columns = torch.arange(self.first_column, self.first_column + self.seq, device=self.device)
        return self._columns

    @property
    def real_tokens(self) -> torch.Tensor:
        if self._real_tokens is None:
            self._real_tokens = torch.ones(self.batch, self.seq, dtype=torch.bool, device=self.device)
        return self._real_tokens

    def on(self, device: torch.device) -> ForwardContext:
        """This context with its tensors on `device` (layers spread by device_map), made once per forward."""
        if self.device == device:
            return self
        view = self._views.get(device)
        if view is None:
            move = lambda t: None if t is None else t.to(device)
            view = ForwardContext(
                batch=self.batch, seq=self.seq, device=device, first_column=lambda: self.first_column,
                prompt_width=lambda: self.prompt_width, real_tokens=move(self._real_tokens),
                last_prompt_column=self.last_prompt_column.to(device), is_continuation=self.is_continuation,
                after_prompt=self.after_prompt, every_token_real=self.every_token_real,
                modality=move(self.modality), row_state=self.row_state,
                generated_offset=move(self.generated_offset),
            )
            self._views[device] = view
        return view

    def mask_for(self, positions: Any) -> torch.Tensor | None:
        """The position mask of a spec, computed once per forward pass."""
        if positions not in self._mask_cache:
            self._mask_cache[positions] = positions.mask(self)
        return self._mask_cache[positions]

    def weight_for(self, positions: Any, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
        """`scale` at the chosen positions and 0 elsewhere, [batch, seq, 1] of `dtype`; once per forward
        pass."""
        key = (positions, dtype, scale)
        if key not in self._mask_cache:
            mask = self.mask_for(positions)
            if mask is None:
                raise ValueError(f"positions {positions} select nothing in this forward pass")
            weight = mask.unsqueeze(-1).to(dtype)
            self._mask_cache[key] = weight if scale == 1.0 else weight * scale
        return self._mask_cache[key]
