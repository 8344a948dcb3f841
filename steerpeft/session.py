"""Per-model tracking of where each forward pass sits in a sequence.

One `SteeringSession` is attached to a model while any plan or recorder is
active on it.  A forward pre-hook on the top-level model reads the attention
mask and the KV cache length and publishes a `ForwardContext`: for every row,
which absolute columns the current chunk covers, which are real tokens, where
the prompt ends.  Layer hooks read that context, so positions stay exact for
left or right padding and for decoding with or without a cache.

What counts as the prompt.  Each `generate` call (and each `generation(model)`
block) is one generation: its first forward is the prompt, every later forward
continues it.  The prompt is the tokens that forward feeds; when `generate` is
given a filled cache (a second chat turn, a prefix prefilled by hand, a cache
returned by an earlier `generate`) the cached columns are context, not prompt:
the call's new tokens are its prompt, their last real token is the decision
position, and `generated` / `first_generated:N` count from the token after it.
Earlier turns are not steered again (their keys and values are in the cache as
they were computed).  Outside a generation, a forward on a filled cache of the
same batch continues the last prompt (a hand-written decoding loop); wrap a new
turn fed by hand in `generation(model)` to make it a prompt.

So a turn generated from a cache equals a fresh cache-less run over the whole
conversation that steers, for every turn, the positions that turn's call chose.
It equals the same plan run fresh on the whole conversation when the earlier
turns steered nothing the fresh run would not: always for `all` (each token is
steered once, by the call that fed it); for `decision`, `generated`,
`first_generated:N` and MARS gates when the earlier turns ran outside the block
or changed nothing (a gate that stayed shut on a benign turn 1); never for
`prompt` (a fresh run counts earlier answers as prompt).  Chunked prefill
(`prefill_chunk_size`) is not followed: its first chunk is taken for the prompt.

Columns are known before any layer runs, from the 2-D mask width, or from the
cache length where the cache reports it as a Python int (`DynamicCache`).  A
cache that counts on the device (`StaticCache`) is read once per prompt (a host
sync); after that the session counts the tokens each decoding step of the
generation feeds: on the host in eager mode, and in a device tensor under
`torch.compile`, so a compiled step neither syncs nor specialises on its column.
(A hand-written loop outside a generation reads such a cache at every step.)

Rows keep the modality of the media they saw: a cache filled by a prompt with
an image (seen by this session) makes a later text-only turn on that cache an
image row too.  Nothing is global: the session lives on the model.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from steerpeft.forward_context import ForwardContext, Lazy
from steerpeft.inputs.modality import row_modalities

_SESSION_ATTR = "_steerpeft_session"
_LOCK = threading.Lock()


@dataclass
class _Generation:
    """One generation (a `generate` call or a `generation()` block) as the session follows it.

    `prompt` is its first forward.  Later forwards continue it; where neither the mask nor the
    cache gives their first column as a Python int (a `StaticCache` counts on the device), the
    session counts the tokens they feed: `next_column` on the host for eager steps, `fed` (tokens
    after the prompt, a 0-d device tensor updated in place) for compiled steps.  transformers runs
    a generation's decoding steps either all compiled or all eager, so one count is enough for each.
    """

    prompt: ForwardContext | None = None
    next_column: int = 0
    fed: torch.Tensor | None = None


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
        self._generation: _Generation | None = None
        self._prompt: ForwardContext | None = None
        self._media: weakref.WeakKeyDictionary[Any, torch.Tensor] = weakref.WeakKeyDictionary()
        self._media_without_cache: torch.Tensor | None = None
        self._handles: list[Any] = []
        self._had_own_generate = False
        self._own_generate: Callable[..., Any] | None = None

    # -- lifecycle -------------------------------------------------------
    def _install(self) -> None:
        self._handles = [self.model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
                         self.model.register_forward_hook(self._after_forward)]
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
        outer = self._generation
        self._generation = _Generation()
        try:
            yield
        finally:
            self._generation = outer

    def _uninstall(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if "generate" in self.model.__dict__:
            if self._had_own_generate:
                self.model.generate = self._own_generate  # type: ignore[method-assign]
            else:
                del self.model.generate
        self.context = None
        self._prompt = None
        self._media.clear()
        self._media_without_cache = None

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
        # A 4-D mask (static caches) or a dict of them (hybrid models) holds no padding to read:
        # every column then counts as real.
        flat_mask = mask if torch.is_tensor(mask) and mask.dim() == 2 else None
        chunk_mask = (
            None if flat_mask is None else flat_mask.to(device=device).bool()[:, flat_mask.shape[1] - seq:]
        )
        cache = kwargs.get("past_key_values")
        current = self._generation
        if current is not None and current.prompt is not None and current.prompt.batch == batch:
            self.context = self._decoding_step(current, seq, device, flat_mask, chunk_mask, cache)
            return
        past = int(flat_mask.shape[1]) - seq if flat_mask is not None else _cache_length(cache)
        prompt = self._prompt
        if current is None and past > 0 and prompt is not None and prompt.batch == batch:
            # Outside a generation, a forward on a filled cache continues the last prompt (a hand-written
            # loop).
            self.context = self._continuation(prompt, seq, device, past, chunk_mask,
                                              after_prompt=past >= prompt.prompt_width)
            return
        # A new prompt: the whole chunk is prompt; its last real token is the decision position.
        if chunk_mask is None:
            last = torch.full((batch,), seq - 1, dtype=torch.long, device=device)
        else:
            arange = torch.arange(seq, device=device).expand(batch, seq)
            last = torch.where(chunk_mask, arange, torch.full_like(arange, -1)).amax(dim=1)
        self.context = ForwardContext(
            batch=batch, seq=seq, device=device, first_column=past, prompt_width=past + seq,
            real_tokens=chunk_mask, last_prompt_column=last + past, is_continuation=False,
            every_token_real=chunk_mask is None,
            modality=self._prompt_modality(input_ids, cache, past, batch, kwargs.get("use_cache")),
        )
        self._prompt = self.context
        if current is not None:
            current.prompt, current.next_column = self.context, past + seq
            current.fed = torch.zeros((), dtype=torch.long, device=device)
            if not torch.compiler.is_compiling():
                # updated in place by compiled steps (CUDA graphs)
                torch._dynamo.mark_static_address(current.fed)

    def _decoding_step(
        self, current: _Generation, seq: int, device: torch.device, flat_mask: torch.Tensor | None,
        chunk_mask: torch.Tensor | None, cache: Any,
    ) -> ForwardContext:
        """The context of a forward after the generation's prompt, its first column known before any layer
        runs."""
        prompt = current.prompt
        assert prompt is not None
        if flat_mask is not None:
            first: int | None = int(flat_mask.shape[1]) - seq
        else:
            reported = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
            if isinstance(reported, int):
                first = reported  # 0 without a cache: a cache-less step re-feeds the whole sequence
            elif torch.compiler.is_compiling():
                first = None  # counted on the device below: a Python int here would specialise the graph
            else:
                first = current.next_column
        if first is None:
            assert current.fed is not None
            offset = current.fed.clone()
            current.fed.add_(seq)
            return self._continuation(
                prompt, seq, device, None, chunk_mask, after_prompt=True, generated_offset=offset
            )
        current.next_column = first + seq
        return self._continuation(
            prompt, seq, device, first, chunk_mask, after_prompt=first >= prompt.prompt_width
        )

    def _continuation(self, prompt: ForwardContext, seq: int, device: torch.device, first: int | None,
                      chunk_mask: torch.Tensor | None, after_prompt: bool,
                      generated_offset: torch.Tensor | None = None) -> ForwardContext:
        """A chunk that continues `prompt`: it shares the prompt's decision columns, modality and row state.

        After the prompt every fed token is taken to be real (pass 1 for new tokens in the mask,
        as `generate` does), which lets whole-chunk specs skip the position mask.
        """
        first_column: Lazy
        if first is None:
            offset = generated_offset
            assert offset is not None
            first_column = lambda: prompt.prompt_width + int(offset)  # a host sync, only if a spec asks
        else:
            first_column = first
        return ForwardContext(
            batch=prompt.batch, seq=seq, device=device, first_column=first_column,
            prompt_width=functools.partial(getattr, prompt, "prompt_width"), real_tokens=chunk_mask,
            last_prompt_column=prompt.last_prompt_column.to(device), is_continuation=True,
            after_prompt=after_prompt, every_token_real=chunk_mask is None or after_prompt,
            modality=prompt.modality, row_state=prompt.row_state,
            generated_offset=generated_offset,
        )

    def _after_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        """Remember the media of a prompt whose cache the model created itself (`use_cache` without one)."""
        if self._media_without_cache is None:
            return
        media, self._media_without_cache = self._media_without_cache, None
        cache = getattr(output, "past_key_values", None)
        if cache is not None:
            self._remember_media(cache, media)

    def _prompt_modality(self, input_ids: torch.Tensor | None, cache: Any, past: int, batch: int,
                         use_cache: bool | None) -> torch.Tensor | None:
        """Each row's modality: its new tokens' media, or, on a cache this session filled, the media already
        in it."""
        self._media_without_cache = None
        modality = self._modality(input_ids)
        if modality is None:
            return None
        earlier = self._media_in(cache) if past > 0 else None
        if earlier is not None and earlier.shape[0] == batch:
            modality = torch.maximum(modality, earlier.to(modality.device))
        if cache is not None:
            self._remember_media(cache, modality)
        elif use_cache is not False:
            self._media_without_cache = modality  # the model makes the cache: `_after_forward` files it
        return modality

    def _media_in(self, cache: Any) -> torch.Tensor | None:
        try:
            return self._media.get(cache)
        except TypeError:  # a cache that takes no weak reference: its media are not tracked
            return None

    def _remember_media(self, cache: Any, modality: torch.Tensor) -> None:
        with contextlib.suppress(TypeError):
            self._media[cache] = modality

    def _modality(self, input_ids: torch.Tensor | None) -> torch.Tensor | None:
        return row_modalities(input_ids, self.image_token_id, self.video_token_id, self.frame_token_id)


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

    Inside, the first forward is the prompt (also on a filled cache: a new chat turn
    fed by hand) and every later one continues it, so cache-less loops steer the right
    positions and cached steps take the fast path (new tokens are taken to be real:
    pass 1 for them in the attention mask, as `generate` does).  Does nothing when no
    steering is active on `model`.
    """
    session = active_session(model)
    if session is None:
        yield
        return
    with session.generation():
        yield
