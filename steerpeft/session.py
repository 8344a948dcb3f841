"""Per-model tracking of where each forward pass sits in a sequence.

One `SteeringSession` is attached to a model while any plan or recorder is
active on it.  A forward pre-hook on the top-level model reads the attention
mask and the KV cache length and publishes a `ForwardContext`: for every row,
which absolute columns the current chunk covers, which are real tokens, where
the prompt ends.  Layer hooks read that context, so positions stay exact for
left or right padding and for decoding with or without a cache.

`generate` is wrapped while the session lives so a cache-less decoding step
(which re-feeds the whole sequence) is known to continue the prompt instead
of starting a new one.  Nothing is global: the session lives on the model.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from steerpeft.inputs.modality import Modality

_SESSION_ATTR = "_steerpeft_session"
_LOCK = threading.Lock()


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
    step on its column unless the plan needs it.
    """

    def __init__(self, *, batch: int, seq: int, device: torch.device, first_column: Lazy, prompt_width: Lazy,
                 real_tokens: torch.Tensor | None, last_prompt_column: torch.Tensor, is_continuation: bool,
                 after_prompt: bool = False, every_token_real: bool = False, modality: torch.Tensor | None = None,
                 row_state: dict[Any, torch.Tensor] | None = None) -> None:
        self.batch, self.seq, self.device = batch, seq, device
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
                batch=self.batch, seq=self.seq, device=device,
                first_column=lambda: self.first_column, prompt_width=lambda: self.prompt_width,
                real_tokens=move(self._real_tokens), last_prompt_column=self.last_prompt_column.to(device),
                is_continuation=self.is_continuation, after_prompt=self.after_prompt,
                every_token_real=self.every_token_real, modality=move(self.modality), row_state=self.row_state,
            )
            self._views[device] = view
        return view

    def mask_for(self, positions: Any) -> torch.Tensor | None:
        """The position mask of a spec, computed once per forward pass."""
        if positions not in self._mask_cache:
            self._mask_cache[positions] = positions.mask(self)
        return self._mask_cache[positions]

    def weight_for(self, positions: Any, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
        """`scale` at the chosen positions and 0 elsewhere, [batch, seq, 1] of `dtype`; once per forward pass."""
        key = (positions, dtype, scale)
        if key not in self._mask_cache:
            mask = self.mask_for(positions)
            if mask is None:
                raise ValueError(f"positions {positions} select nothing in this forward pass")
            weight = mask.unsqueeze(-1).to(dtype)
            self._mask_cache[key] = weight if scale == 1.0 else weight * scale
        return self._mask_cache[key]


class SteeringSession:
    """Tracks prompts and decoding steps of one model for its active steering."""

    def __init__(self, model: nn.Module, image_token_id: int | None, video_token_id: int | None,
                 frame_token_id: int | None = None) -> None:
        self.model = model
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        self.frame_token_id = frame_token_id
        self.users = 0
        self.context: ForwardContext | None = None
        self._generating = 0
        self._prompt_seen = False
        self._prompt: ForwardContext | None = None
        self._handle: Any = None
        self._had_own_generate = False
        self._own_generate: Callable[..., Any] | None = None

    # -- lifecycle -------------------------------------------------------
    def _install(self) -> None:
        self._handle = self.model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        if hasattr(self.model, "generate"):
            self._had_own_generate = "generate" in self.model.__dict__
            self._own_generate = self.model.__dict__.get("generate")
            original = self.model.generate

            @functools.wraps(original)
            def generate(*args: Any, **kwargs: Any) -> Any:
                with self.generation():
                    return original(*args, **kwargs)

            self.model.generate = generate  # type: ignore[method-assign]

    @contextlib.contextmanager
    def generation(self) -> Iterator[None]:
        """Forwards inside belong to one generation: the first is the prompt, later ones continue it."""
        self._generating += 1
        self._prompt_seen = False
        try:
            yield
        finally:
            self._generating -= 1
            self._prompt_seen = False

    def _uninstall(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if "generate" in self.model.__dict__:
            if self._had_own_generate:
                self.model.generate = self._own_generate  # type: ignore[method-assign]
            else:
                del self.model.generate
        self.context = None
        self._prompt = None

    # -- per forward -----------------------------------------------------
    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args and torch.is_tensor(args[0]) else None)
        embeds = kwargs.get("inputs_embeds")
        reference = input_ids if input_ids is not None else embeds
        if reference is None:
            return
        batch, seq = reference.shape[0], reference.shape[1]
        device = reference.device
        mask = kwargs.get("attention_mask")
        cache = kwargs.get("past_key_values")
        prompt = self._prompt
        known_prompt = prompt is not None and prompt.last_prompt_column.shape[0] == batch
        if mask is not None and mask.dim() == 2:
            chunk_mask: torch.Tensor | None = mask.to(device=device).bool()[:, mask.shape[1] - seq:]
            past: Lazy = int(mask.shape[1]) - seq
            every_token_real = False
        else:
            # No 2-D mask to read (none given, or the 4-D masks of a static cache): every column
            # counts as real.  Inside `generate`, a step after the prompt with a cache continues
            # at the cache length; it is read only if a position spec needs it (a host sync).
            chunk_mask, every_token_real = None, True
            if self._generating and self._prompt_seen and known_prompt and cache is not None:
                past = functools.partial(_cache_length, cache)
                self.context = ForwardContext(
                    batch=batch, seq=seq, device=device, first_column=past,
                    prompt_width=functools.partial(getattr, prompt, "prompt_width"), real_tokens=None,
                    last_prompt_column=prompt.last_prompt_column.to(device), is_continuation=True,
                    after_prompt=True, every_token_real=True, modality=prompt.modality, row_state=prompt.row_state,
                )
                return
            past = _cache_length(cache)
        continuing = past > 0 or (self._generating > 0 and self._prompt_seen)
        if continuing and known_prompt:
            cached_step = past > 0
            self.context = ForwardContext(
                batch=batch, seq=seq, device=device, first_column=past, prompt_width=prompt.prompt_width,
                real_tokens=chunk_mask, last_prompt_column=prompt.last_prompt_column.to(device), is_continuation=True,
                after_prompt=cached_step and past >= prompt.prompt_width,
                every_token_real=every_token_real or (self._generating > 0 and cached_step),
                modality=prompt.modality, row_state=prompt.row_state,
            )
            return
        # A new prompt: the whole chunk is prompt; its last real token is the decision position.
        if chunk_mask is None:
            last = torch.full((batch,), seq - 1, dtype=torch.long, device=device)
        else:
            arange = torch.arange(seq, device=device).expand(batch, seq)
            last = torch.where(chunk_mask, arange, torch.full_like(arange, -1)).amax(dim=1)
        self.context = ForwardContext(
            batch=batch, seq=seq, device=device, first_column=past, prompt_width=past + seq, real_tokens=chunk_mask,
            last_prompt_column=last + past, is_continuation=False, every_token_real=every_token_real,
            modality=self._modality(input_ids),
        )
        self._prompt = self.context
        if self._generating:
            self._prompt_seen = True

    def _modality(self, input_ids: torch.Tensor | None) -> torch.Tensor | None:
        """Per row: `Modality.VIDEO` if it holds video tokens, else `IMAGE` if image tokens, else `TEXT`.

        Models that feed video frames through image tokens (SmolVLM2) have no video token; there
        a row that opens two or more frames (`frame_token_id`, recorded from the processor at fit
        time) is a video.  A prompt with several images therefore counts as a video on them.
        """
        if input_ids is None or (self.image_token_id is None and self.video_token_id is None):
            return None
        modality = torch.full((input_ids.shape[0],), int(Modality.TEXT), dtype=torch.long, device=input_ids.device)
        if self.image_token_id is not None:
            modality = torch.where((input_ids == self.image_token_id).any(dim=1), int(Modality.IMAGE), modality)
        if self.video_token_id is not None:
            modality = torch.where((input_ids == self.video_token_id).any(dim=1), int(Modality.VIDEO), modality)
        elif self.frame_token_id is not None:
            modality = torch.where((input_ids == self.frame_token_id).sum(dim=1) >= 2, int(Modality.VIDEO), modality)
        return modality


def _cache_length(cache: Any) -> int:
    """Tokens already in a KV cache (0 without one); a host sync for caches that count on the device."""
    if cache is None or not hasattr(cache, "get_seq_length"):
        return 0
    return int(cache.get_seq_length())


def acquire_session(model: nn.Module, image_token_id: int | None = None, video_token_id: int | None = None,
                    frame_token_id: int | None = None) -> SteeringSession:
    """The model's session, created and installed on first use."""
    with _LOCK:
        session: SteeringSession | None = model.__dict__.get(_SESSION_ATTR)
        if session is None:
            session = SteeringSession(model, image_token_id, video_token_id, frame_token_id)
            session._install()
            model.__dict__[_SESSION_ATTR] = session
        else:
            session.image_token_id = session.image_token_id if image_token_id is None else image_token_id
            session.video_token_id = session.video_token_id if video_token_id is None else video_token_id
            session.frame_token_id = session.frame_token_id if frame_token_id is None else frame_token_id
        session.users += 1
        return session


def release_session(model: nn.Module) -> None:
    """Drop one user; the last one removes the pre-hook and the generate wrapper."""
    with _LOCK:
        session: SteeringSession | None = model.__dict__.get(_SESSION_ATTR)
        if session is None:
            return
        session.users -= 1
        if session.users <= 0:
            session._uninstall()
            del model.__dict__[_SESSION_ATTR]


def active_session(model: nn.Module) -> SteeringSession | None:
    return model.__dict__.get(_SESSION_ATTR)


@contextlib.contextmanager
def generation(model: nn.Module) -> Iterator[None]:
    """Mark a hand-written decoding loop as one generation, as `generate` is marked.

    Inside, the first forward is the prompt and every later one continues it, so
    cache-less loops steer the right positions and cached steps take the fast path
    (new tokens are taken to be real: pass 1 for them in the attention mask, as
    `generate` does).  Does nothing when no steering is active on `model`.
    """
    session = active_session(model)
    if session is None:
        yield
        return
    with session.generation():
        yield
