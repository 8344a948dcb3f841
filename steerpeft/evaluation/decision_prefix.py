"""Decision logits of many decision-position plans from one prefilled prompt prefix.

A plan that steers only the decision position (each row's last prompt token) cannot
change anything before it: every layer computes the first T-1 tokens of a prompt the
same way with or without the plan, so their keys and values are the same too.  A
`DecisionPrefix` therefore runs the prompts minus their last token once, unsteered and
outside any steering block, into a KV cache, and each plan afterwards runs only the last
token, on a fork of that cache.  Per plan that is one token per row instead of T.

The logits equal `decision_logits(model, batch)` under `plan.apply(model)` on the full
prompts (the same positions: the model's default `0..T-1` per batch, padding included),
up to float rounding of the different kernel shapes (tests: <= 1e-4).

Several batches (e.g. `Steerer.text_batches` chunks) are prefilled one by one, each as
given, and then stacked into one cache (left-padded with masked zero keys and values),
so every plan costs one forward of one token per row over all the batches together.

Assumptions, checked where cheap:
- left padding: every row ends in the last column (refused otherwise);
- plans steer the `decision` position only (`require_decision_plan` names any other step);
- no steering block and no recorder is active on the model while a prefix is filled or
  stepped (the plan is applied by `logits` itself, around the one-token step);
- media tensors (`pixel_values`, ...) are consumed by the prefix; the decision token is
  text.  Models that keep multimodal rope state between forwards (Qwen2-VL's
  `rope_deltas`) are refused: their last-token positions are not the plain ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from steerpeft.architectures import decoder_layers, resolve_layout, unwrap_model
from steerpeft.errors import ConfigError, DataError
from steerpeft.evaluation.kv_forks import fork_cache, require_dynamic_cache, stack_caches
from steerpeft.evaluation.row_blocks import for_rows
from steerpeft.evaluation.runs import _accepts, _attention_mask, _on_model_device, last_token_index
from steerpeft.evaluation.runs import decision_logits as _full_decision_logits
from steerpeft.plan import Plan
from steerpeft.positions import DecisionPosition
from steerpeft.recording import layer_output
from steerpeft.session import active_session

MAX_STACKED_ROWS = 1024
"""Rows of one stacked decision step (`DecisionPrefix.logits_of_plans`): a few plans per step."""

__all__ = [
    "DecisionOutput", "DecisionPrefix", "decision_logits_per_plan", "fork_cache", "plan_logits_runner",
    "prefix_supported", "require_decision_plan", "rows_modality",
]

SEQUENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", "position_ids")
"""Batch entries laid out [batch, seq] like the tokens: sliced into prefix and decision token.
Every other entry (pixel values, image sizes, ...) goes to the prefix forward only."""


def require_decision_plan(plan: Any) -> None:
    """Refuse a plan with a step that steers anything but the decision position.

    Only such plans leave the prefix unchanged, so only they can reuse it.  Every built-in
    intervention, scaler and site is fine (each decides from the steered position's own state,
    or, like the conditional scaler, from the decision state of another layer); `positions`
    must be `decision`.
    """
    for step in getattr(plan, "steps", ()):
        if not isinstance(step.positions, DecisionPosition):
            raise ConfigError(
                f"Step {step.name!r} steers positions {str(step.positions)!r}; a decision prefix reuses the "
                "unsteered prompt, so it takes plans that steer the 'decision' position only. Use "
                "decision_logits(model, batch) under plan.apply(model) for this plan."
            )


@dataclass
class DecisionOutput:
    """What one decision step returns: float32 logits [rows, vocab] and, if asked, states per layer [rows,
    hidden]."""

    logits: torch.Tensor
    states: dict[int, torch.Tensor]


class DecisionPrefix:
    """Prompts minus their decision token, prefilled once; `logits(plan)` runs only the last token.

    `batches`: one batch or a list of batches (dicts of tensors as a tokenizer or processor
    returns them, left-padded, on any device: they are moved to the model's).  Rows keep
    their order: batch 0's rows first.  Memory: the prefix cache of every row is kept (the
    size of one generation's cache), and each step makes one transient copy of it.
    """

    def __init__(
        self, model: nn.Module, batches: dict[str, torch.Tensor] | Sequence[dict[str, torch.Tensor]]
    ) -> None:
        self.model = model
        self._base = unwrap_model(model)
        batch_list = [batches] if isinstance(batches, dict) else list(batches)
        if not batch_list:
            raise DataError("A decision prefix needs at least one batch.")
        if active_session(self._base) is not None:
            raise ConfigError(
                "Fill a decision prefix outside any steering block or recording: the prefix must be the "
                "unsteered prompt (the plan is applied by DecisionPrefix.logits around the decision token "
                "only)."
            )
        if _keeps_rope_state(self._base):
            raise ConfigError(
                f"{type(self._base).__name__} keeps multimodal rope positions between forwards "
                "(rope_deltas), so the decision token cannot run on its own against a prefix; use "
                "decision_logits(model, batch) per plan."
            )
        caches, widths, tails, ids = [], [], [], []
        with torch.no_grad():
            for batch in batch_list:
                cache, width, tail = self._prefill(batch)
                caches.append(cache)
                widths.append(width)
                tails.append(tail)
                ids.append(batch["input_ids"])
        self.widths = widths
        self.rows_per_batch = [int(tail["input_ids"].shape[0]) for tail in tails]
        self._input_ids = ids  # full prompts, read for the rows' modality once a plan's session exists
        if len(set(widths)) > 1 and "position_ids" not in tails[0]:
            raise ConfigError(f"{type(self._base).__name__} takes no position_ids, so batches of different "
                              "widths cannot share one decision step; build one DecisionPrefix per batch.")
        if len(caches) == 1:
            self.cache = caches[0]
            self._tail = tails[0]
        else:
            self.cache = stack_caches(caches, [w - 1 for w in widths])
            self._tail = self._stacked_tail(tails, widths)

    # -- building ------------------------------------------------------------
    def _prefill(self, batch: dict[str, torch.Tensor]) -> tuple[Any, int, dict[str, torch.Tensor]]:
        batch = _on_model_device(self.model, batch)
        mask = _attention_mask(batch)
        width = int(mask.shape[1])
        if width < 2:
            raise DataError(
                "A decision prefix needs prompts of at least 2 columns (a prefix and the decision token)."
            )
        if not bool((last_token_index(mask) == width - 1).all()):
            raise DataError(
                "A decision prefix needs left-padded batches (every row ending in the last column); "
                "encode the prompts with padding_side='left'."
            )
        prefix: dict[str, Any] = {}
        tail: dict[str, torch.Tensor] = {}
        for key, value in batch.items():
            if key in SEQUENCE_KEYS and isinstance(value, torch.Tensor) and value.dim() == 2:
                prefix[key] = value[:, :-1]
                tail[key] = value if key == "attention_mask" else value[:, -1:]
            elif key in SEQUENCE_KEYS and value is not None:
                raise DataError(
                    f"Batch entry {key!r} must be a 2-D [batch, seq] tensor for a decision prefix."
                )
            else:
                prefix[key] = value
        extra: dict[str, Any] = {"use_cache": True}
        if _accepts(self.model, "logits_to_keep"):
            extra["logits_to_keep"] = 1  # the prefix's logits are never read
        output = self.model(**prefix, **extra)
        cache = output.past_key_values
        require_dynamic_cache(cache)
        if "position_ids" not in tail and _accepts(self.model, "position_ids"):
            # The position `decision_logits` gives the last column: the model's default 0..T-1.  Explicit,
            # because batches of other widths are stacked into one step.
            tail["position_ids"] = torch.full_like(tail["input_ids"], width - 1)
        return cache, width, tail

    @staticmethod
    def _stacked_tail(tails: list[dict[str, torch.Tensor]], widths: list[int]) -> dict[str, torch.Tensor]:
        keys = set(tails[0])
        if any(set(tail) != keys for tail in tails):
            raise DataError(
                "Every batch of a decision prefix must carry the same entries (input_ids, attention_mask, "
                "...)."
            )
        longest = max(widths)
        stacked: dict[str, torch.Tensor] = {}
        for key in keys:
            parts = [tail[key] for tail in tails]
            if key == "attention_mask":
                parts = [torch.cat([part.new_zeros(part.shape[0], longest - part.shape[1]), part], dim=1)
                         for part in parts]
            stacked[key] = torch.cat(parts)
        return stacked

    # -- stepping ------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return sum(self.rows_per_batch)

    def logits(self, plan: Any = None) -> torch.Tensor:
        """Float32 decision logits [rows, vocab] under `plan` (None: unsteered)."""
        return self.run(plan).logits

    @torch.no_grad()
    def run(self, plan: Any = None, record_layers: Sequence[int] = ()) -> DecisionOutput:
        """One decision step under `plan` (None: unsteered); `record_layers`: keep the decision
        token's output of those decoder layers ([rows, hidden], float32, after any steering there)."""
        if active_session(self._base) is not None:
            raise ConfigError(
                "DecisionPrefix.run was called inside a steering block or recording; pass the plan instead "
                "(`prefix.logits(plan)`), so it steers the decision token only."
            )
        if plan is None:
            return self._step(record_layers)
        require_decision_plan(plan)
        with plan.apply(self.model), self._rows_modality():
            return self._step(record_layers)

    @torch.no_grad()
    def logits_of_plans(self, plans: Sequence[Any], max_rows: int = MAX_STACKED_ROWS) -> list[torch.Tensor]:
        """Float32 decision logits [rows, vocab] under each of `plans` (None: unsteered), stacked.

        The same logits as `[self.logits(plan) for plan in plans]`, from fewer, larger steps: the
        prefix is repeated once per plan (up to `max_rows` rows a step) and each plan steers only
        its own block of rows (`for_rows`).  A one-token step on an accelerator is bound by launching
        its kernels, not by its rows, so a layer sweep costs a few steps instead of one per plan.
        Memory: the prefix cache once per plan of a step.
        """
        if active_session(self._base) is not None:
            raise ConfigError(
                "DecisionPrefix.logits_of_plans was called inside a steering block; pass the plans."
            )
        for plan in plans:
            if plan is not None:
                require_decision_plan(plan)
        rows = self.num_rows
        per_step = max(1, max_rows // rows)
        found: list[torch.Tensor] = []
        for start in range(0, len(plans), per_step):
            group = list(plans[start:start + per_step])
            found += self._stacked_step(group) if len(group) > 1 else [self.logits(group[0])]
        return found

    def _stacked_step(self, plans: list[Any]) -> list[torch.Tensor]:
        rows, count = self.num_rows, len(plans)
        index = torch.arange(rows).repeat(count)
        steps = []
        info = next((plan.model_info for plan in plans if plan is not None), {})
        for block, plan in enumerate(plans):
            if plan is not None:
                mask = torch.zeros(rows * count)
                mask[block * rows:(block + 1) * rows] = 1.0
                steps += for_rows(plan, mask).steps
        tail = {key: value.repeat(count, *([1] * (value.dim() - 1))) for key, value in self._tail.items()}
        cache = fork_cache(self.cache, index)
        with (Plan(steps, info).apply(self.model) if steps else nullcontext()), \
                rows_modality(self._base, self._input_ids, index):
            output = self.model(**tail, past_key_values=cache, use_cache=True)
        return list(output.logits[:, -1].float().split(rows))

    def _step(self, record_layers: Sequence[int]) -> DecisionOutput:
        states: dict[int, torch.Tensor] = {}
        with _recording(self._base, record_layers, states):
            output = self.model(**self._tail, past_key_values=fork_cache(self.cache), use_cache=True)
        return DecisionOutput(output.logits[:, -1].float(), states)

    def _rows_modality(self) -> Any:
        return rows_modality(self._base, self._input_ids)


@contextmanager
def rows_modality(
    model: nn.Module, input_ids: Sequence[torch.Tensor], rows: torch.Tensor | None = None
) -> Iterator[None]:
    """While open, every forward of `model` sees the modality of the full prompts `input_ids`.

    The session of an applied plan reads each row's modality (for re-centering) from the tokens
    of the forward it sees, and a decision token run against a prefix holds no image or video
    token.  A forward pre-hook, registered after the session's own, puts the modality read from
    the full prompts back (`rows`: only those rows of the concatenated prompts).  Call it inside
    `plan.apply(model)`; a no-op for text-only models.
    """
    session = active_session(model)
    modality = None
    if session is not None:
        parts = [session._modality(ids) for ids in input_ids]
        if parts and all(part is not None for part in parts):
            modality = torch.cat(parts)  # type: ignore[arg-type]
    if modality is None:
        yield
        return
    if rows is not None:
        modality = modality[rows.to(modality.device)]
    modality = modality.to(next(model.parameters()).device)  # once, not in the hook

    def restore(module: nn.Module, args: Any, kwargs: Any) -> None:
        if session.context is not None:
            session.context.modality = modality.to(session.context.device)

    handle = model.register_forward_pre_hook(restore, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def prefix_supported(model: nn.Module) -> bool:
    """Whether a prefix of this model's prompts can be prefilled apart from the decision token.

    Models that keep multimodal rope state between forwards (Qwen2-VL's `rope_deltas`) cannot:
    the positions of a lone decision token would not be the plain ones.
    """
    return not _keeps_rope_state(unwrap_model(model))


def _keeps_rope_state(model: nn.Module) -> bool:
    inner = getattr(model, "model", None)
    return hasattr(model, "rope_deltas") or (inner is not None and hasattr(inner, "rope_deltas"))


@contextmanager
def _recording(model: nn.Module, layers: Sequence[int], into: dict[int, torch.Tensor]) -> Iterator[None]:
    if not layers:
        yield
        return
    modules = decoder_layers(model, resolve_layout(model))

    def keep(layer: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            into[layer] = layer_output(output)[:, -1].float()

        return hook

    handles = [modules[layer].register_forward_hook(keep(layer)) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def decision_logits_per_plan(
    model: nn.Module, batches: Sequence[dict[str, torch.Tensor]], plans: Sequence[Any]
) -> list[torch.Tensor]:
    """Decision logits [rows, vocab] of every plan (None: unsteered) over all `batches`, from one prefix."""
    for plan in plans:
        if plan is not None:
            require_decision_plan(plan)
    prefix = DecisionPrefix(model, batches)
    return [prefix.logits(plan) for plan in plans]


def plan_logits_runner(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]], shared: bool = True
                       ) -> Callable[[Sequence[Any]], list[torch.Tensor]]:
    """Float32 decision logits of `batches` under each of several decision-position plans (None: unsteered).

    With `shared`, a `DecisionPrefix` where the model allows it (one prefill, one token per plan,
    several plans stacked per step); else (or for models that keep multimodal rope state) one full
    forward per plan.  The logits stay on the model's device: scores over the vocabulary reduce there.
    """
    if shared and prefix_supported(model):
        return DecisionPrefix(model, list(batches)).logits_of_plans

    def one_by_one(plans: Sequence[Any]) -> list[torch.Tensor]:
        found = []
        for plan in plans:
            with plan.apply(model) if plan is not None else nullcontext(), torch.no_grad():
                found.append(torch.cat([_full_decision_logits(model, batch) for batch in batches]).float())
        return found

    return one_by_one
