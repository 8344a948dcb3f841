"""Reusing unsteered work when evaluating plans that steer the decision position only.

Two facts make most of a steered evaluation redundant:

1. A row that a decision-position plan leaves unchanged at the decision position is
   unchanged everywhere: nothing else is ever steered, so its greedy answer is the unsteered
   one, bit for bit.  For a MARS plan that is every row whose gate is closed (t <= tau), and
   t comes from one recorded state per row.  `rows_plan_can_change` lists the other rows,
   and `generate_rows` generates only those, reusing the unsteered answers for the rest.
2. Such a plan cannot change the prompt before the decision token either, so conditions
   that steer from the decision position on can share one unsteered prefill of the prompt
   minus its last token.  `GenerationPrefix` holds it (prefilled with the positions `generate`
   gives left-padded rows), and generates any condition and any subset of rows from a fork.

Generating a subset of a batch keeps the batch's columns (padding included), so the rows see
the same shapes per row; on CPU the kernels then give the same numbers (tests check the
texts).  Rows are decided from states recorded without a cache while generation prefills
with one, so the gate test keeps a safety `margin` (in units of t): a row within it of tau is
regenerated, which is always correct, merely not free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from steerpeft.architectures import unwrap_model
from steerpeft.errors import ConfigError, DataError
from steerpeft.evaluation.decision_prefix import (
    SEQUENCE_KEYS,
    _accepts,
    _keeps_rope_state,
    require_decision_plan,
    rows_modality,
)
from steerpeft.evaluation.kv_forks import fork_cache, require_dynamic_cache
from steerpeft.evaluation.runs import _attention_mask, _on_model_device, generate_texts, last_token_index
from steerpeft.inputs.text import text_tokenizer
from steerpeft.plan import Plan
from steerpeft.positions import DecisionPosition
from steerpeft.session import active_session

DEFAULT_MARGIN = 1e-3
"""Rows with t > tau - margin count as open: covers float differences between how t is measured (decision
prefix, default positions) and how generation computes it (its own prefill, positions counted from the first
real token): at most 3.4e-6 on SmolLM2's eval sets.  Rows right at the threshold are regenerated: correct, not
free."""


def generation_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids `generate` gives a left-padded prompt: real tokens count from 0, padding gets 0."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


# ---------------------------------------------------------------------------
# Which rows can a plan change?


def rows_plan_can_change(
    plan: Plan, states: Mapping[int, torch.Tensor], modality: int | torch.Tensor | None = None,
    margin: float = DEFAULT_MARGIN,
) -> torch.Tensor:
    """Bool [rows]: rows whose answer under `plan` may differ from the unsteered answer.

    `states[layer]` are the rows' unsteered decision-position states [rows, hidden] at the layers
    the plan's scalers read (`DecisionPrefix.run(None, record_layers=...)` or an `ActivationRecorder`
    at the decision position).  `modality`: the rows' `Modality`, one value or a tensor [rows]; None
    for a text-only model.  A step that steers other positions than the decision may change any row;
    otherwise its scaler says which rows it steers (`Scaler.rows_steered`).  Steps are united; a later
    step sees an earlier step's change only on rows already counted, so unsteered states decide exactly
    for the others.
    """
    if not states:
        raise DataError("rows_plan_can_change needs the rows' decision states at the plan's layers.")
    count = int(next(iter(states.values())).shape[0])
    every = torch.ones(count, dtype=torch.bool)
    changed = torch.zeros(count, dtype=torch.bool)
    rows_modality_ = None if modality is None else torch.as_tensor(modality).long().expand(count)
    for step in plan.steps:
        if not isinstance(step.positions, DecisionPosition):
            return every
        for layer in step.layers:
            steered = step.scaler.rows_steered(states, layer, rows_modality_, margin)
            if steered is None:
                return every
            changed |= steered.bool().cpu()
    return changed


# ---------------------------------------------------------------------------
# Generating only some rows, from a shared prefix or not


Steering = Any
"""A `Plan`, a zero-argument factory of a steering context manager (`lambda: plan.apply(model)`), or None."""


def _steering_context(model: nn.Module, steering: Steering) -> AbstractContextManager[Any]:
    if steering is None:
        return nullcontext()
    if hasattr(steering, "apply") and hasattr(steering, "steps"):
        return steering.apply(model)
    if callable(steering):
        return steering()
    raise ConfigError(
        f"steering must be a Plan, a context-manager factory or None, got {type(steering).__name__}."
    )


def _pad_token_id(tokenizer_or_processor: Any) -> int:
    tokenizer = text_tokenizer(tokenizer_or_processor)
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _decode(tokenizer_or_processor: Any, new_tokens: torch.Tensor) -> list[str]:
    tokenizer = text_tokenizer(tokenizer_or_processor)
    decoder = tokenizer if hasattr(tokenizer, "batch_decode") else tokenizer_or_processor
    return list(decoder.batch_decode(new_tokens.cpu(), skip_special_tokens=True))


def _check_left_padded(batch: Mapping[str, Any]) -> torch.Tensor:
    mask = _attention_mask(dict(batch))
    if not bool((last_token_index(mask) == mask.shape[1] - 1).all()):
        raise DataError("Generation needs left-padded batches (every row ending in the last column); "
                        "encode the prompts with padding_side='left'.")
    return mask


@torch.no_grad()
def generate_rows(
    model: nn.Module, tokenizer_or_processor: Any, batch: dict[str, torch.Tensor], rows: torch.Tensor,
    reuse: Sequence[str], max_new_tokens: int, steering: Steering = None,
    prefix: GenerationPrefix | None = None,
) -> list[str]:
    """Greedy answers of one left-padded batch: `rows` (bool [batch]) generated under `steering`, the
    other rows taken from `reuse` (the unsteered answers, which those rows would repeat).

    With a `GenerationPrefix` of this batch the rows start from its fork (the steering must then be a
    decision-position plan); without, the selected rows are generated as a sub-batch of the same
    columns, like `generate_texts` (batches with media tensors are generated whole).
    """
    rows = rows.bool().cpu()
    if len(reuse) != rows.shape[0]:
        raise DataError(f"reuse holds {len(reuse)} answers for a batch of {rows.shape[0]} rows.")
    texts = list(reuse)
    chosen = rows.nonzero().flatten()
    if chosen.numel() == 0:
        return texts
    if prefix is not None:
        fresh = prefix.generate(tokenizer_or_processor, steering, rows=chosen, max_new_tokens=max_new_tokens)
    else:
        if any(isinstance(v, torch.Tensor) and k not in SEQUENCE_KEYS for k, v in batch.items()):
            # Media tensors are not laid out one row per prompt everywhere: generate the whole batch.
            with _steering_context(model, steering):
                every = generate_texts(model, tokenizer_or_processor, batch, max_new_tokens)
            fresh = [every[i] for i in chosen.tolist()]
        else:
            sub = {k: v[chosen.to(v.device)] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with _steering_context(model, steering):
                fresh = generate_texts(model, tokenizer_or_processor, sub, max_new_tokens)
    for index, text in zip(chosen.tolist(), fresh):
        texts[index] = text
    return texts


class GenerationPrefix:
    """One left-padded batch's prompts minus their decision token, prefilled once as `generate` would.

    Unsteered and decision-position conditions generate from forks of it (`generate`), so the
    prompt is prefilled once for all of them; each pays only the decision token and the new
    tokens.  The prefix uses the position ids `generate` gives left-padded rows
    (`generation_positions`), so the answers are those of `generate_texts` on the full prompts.
    Media tensors are consumed by the prefix.  Memory: one generation's cache for the batch.
    """

    def __init__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
        self.model = model
        self._base = unwrap_model(model)
        if active_session(self._base) is not None:
            raise ConfigError("Fill a generation prefix outside any steering block or recording: the prefix "
                              "must be the unsteered prompt.")
        if _keeps_rope_state(self._base):
            raise ConfigError(f"{type(self._base).__name__} keeps multimodal rope positions between forwards "
                              "(rope_deltas); generate from the full prompts instead.")
        batch = _on_model_device(model, batch)
        mask = _check_left_padded(batch)
        if mask.shape[1] < 2:
            raise DataError("A generation prefix needs prompts of at least 2 columns.")
        prefix = {
            k: (v[:, :-1] if k in SEQUENCE_KEYS and isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()
        }
        if "position_ids" not in batch and _accepts(model, "position_ids"):
            prefix["position_ids"] = generation_positions(mask)[:, :-1]
        extra: dict[str, Any] = {"use_cache": True}
        if _accepts(model, "logits_to_keep"):
            extra["logits_to_keep"] = 1
        with torch.no_grad():
            self.cache = model(**prefix, **extra).past_key_values
        require_dynamic_cache(self.cache)
        # What `generate` gets: the full prompt tokens (it feeds only those past the cache) and their mask.
        self.inputs = {k: v for k, v in batch.items() if k in SEQUENCE_KEYS and isinstance(v, torch.Tensor)}
        self.num_rows = int(mask.shape[0])

    @torch.no_grad()
    def generate(
        self, tokenizer_or_processor: Any, steering: Steering = None, *, rows: torch.Tensor | None = None,
        max_new_tokens: int = 32,
    ) -> list[str]:
        """Greedy answers of `rows` (indices or bool; default all) under `steering` (None, or a plan
        that steers the decision position only)."""
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        if active_session(self._base) is not None:
            raise ConfigError(
                "GenerationPrefix.generate was called inside a steering block; pass the plan instead."
            )
        index = None if rows is None else _row_index(rows, self.num_rows)
        inputs = self.inputs if index is None else {k: v[index.to(v.device)] for k, v in self.inputs.items()}
        fork = fork_cache(self.cache, index)
        if steering is not None and not hasattr(steering, "steps"):
            raise ConfigError("A generation prefix steers with a decision-position Plan only: other steering "
                              "would change the shared prefix.")
        if steering is not None:
            require_decision_plan(steering)
        with (
            steering.apply(self.model) if steering is not None else nullcontext(),
            rows_modality(self._base, [self.inputs["input_ids"]], index) if steering is not None
            else nullcontext(),
        ):
            output = self.model.generate(**inputs, past_key_values=fork, max_new_tokens=max_new_tokens,
                                         do_sample=False, pad_token_id=_pad_token_id(tokenizer_or_processor))
        sequences = output.sequences if hasattr(output, "sequences") else output
        return _decode(tokenizer_or_processor, sequences[:, self.inputs["input_ids"].shape[1]:])


def _row_index(rows: torch.Tensor, count: int) -> torch.Tensor:
    rows = torch.as_tensor(rows)
    if rows.dtype == torch.bool:
        if rows.shape[0] != count:
            raise DataError(f"rows has {rows.shape[0]} flags for a batch of {count} rows.")
        return rows.nonzero().flatten().cpu()
    return rows.long().flatten().cpu()
