"""Several conditions in one generation call: each plan steers only its own block of rows.

Decoding small batches is bound by reading the weights, not by the rows: on SmolLM2 (CPU, one
thread) a step of 37 rows costs 1.2x a step of 16.  So the answers of several conditions on the
same prompts are cheaper in one batch that stacks a block of rows per condition, each block
steered by its own plan, than in one call per condition.

`for_rows(plan, rows)` restricts a plan to some rows of the batch it runs on: its scalers' strength
(and re-centering shift) is multiplied by a 0/1 row mask, so other rows get `h + 0 * v`, which is
`h` exactly.  `generate_stacked` builds the stacked batch (from a shared `GenerationPrefix`, whose
fork is repeated per block, or from the prompts themselves), applies every restricted plan, and
splits the answers back.  Rows only ever attend to themselves, so a row's answer is the one it gets
in its own condition's batch, up to how the kernels round for another batch size (on CPU the
tests and the SmolLM2 benchmark see identical answers).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from steerpeft.architectures import unwrap_model
from steerpeft.errors import ConfigError
from steerpeft.evaluation.decision_prefix import (
    SEQUENCE_KEYS,
    require_decision_plan,
    rows_modality,
)
from steerpeft.evaluation.kv_forks import fork_cache, stack_caches
from steerpeft.evaluation.reuse import _decode, _pad_token_id
from steerpeft.evaluation.row_blocks import for_rows
from steerpeft.plan import Plan


@dataclass
class Block:
    """One condition's rows of the batch and what steers them (None: nothing)."""

    plan: Plan | None
    rows: torch.Tensor  # indices into the batch


@contextmanager
def _applied(model: nn.Module, plans: Sequence[Plan]) -> Iterator[None]:
    with ExitStack() as stack:
        for plan in plans:
            stack.enter_context(plan.apply(model))
        yield


@torch.no_grad()
def generate_stacked(
    model: nn.Module, tokenizer_or_processor: Any, batch: dict[str, torch.Tensor],
    blocks: Mapping[str, Block], max_new_tokens: int, prefix: Any = None,
) -> dict[str, list[str]]:
    """Greedy answers of every block's rows, from one `generate` call over the stacked blocks.

    With a `GenerationPrefix` of `batch`, every block starts from a fork of it and every plan must
    steer the decision position only; without, the prompts are stacked (text batches only).
    """
    blocks = {name: block for name, block in blocks.items() if len(block.rows)}
    answers: dict[str, list[str]] = {name: [] for name in blocks}
    if not blocks:
        return answers
    index = torch.cat([torch.as_tensor(block.rows).long().cpu() for block in blocks.values()])
    sizes = [len(block.rows) for block in blocks.values()]
    plans = []
    offset = 0
    for block, size in zip(blocks.values(), sizes):
        if block.plan is not None:
            if prefix is not None:
                require_decision_plan(block.plan)
            mask = torch.zeros(len(index))
            mask[offset:offset + size] = 1
            plans.append(for_rows(block.plan, mask))
        offset += size
    base = unwrap_model(model)
    if prefix is not None:
        inputs = {k: v[index.to(v.device)] for k, v in prefix.inputs.items()}
        forks = [fork_cache(prefix.cache, torch.as_tensor(block.rows).long()) for block in blocks.values()]
        cache = (
            forks[0] if len(forks) == 1 else stack_caches(forks, [prefix.cache.get_seq_length()] * len(forks))
        )
        extra: dict[str, Any] = {"past_key_values": cache}
        full_ids = prefix.inputs["input_ids"]
    else:
        if any(isinstance(v, torch.Tensor) and k not in SEQUENCE_KEYS for k, v in batch.items()):
            raise ConfigError(
                "generate_stacked without a prefix takes text batches only; pass a GenerationPrefix."
            )
        inputs = {k: v[index.to(v.device)] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        extra = {}
        full_ids = batch["input_ids"]
    width = inputs["input_ids"].shape[1]
    with _applied(model, plans), rows_modality(base, [full_ids], index) if plans else _nothing():
        output = model.generate(**inputs, **extra, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=_pad_token_id(tokenizer_or_processor))
    sequences = output.sequences if hasattr(output, "sequences") else output
    texts = _decode(tokenizer_or_processor, sequences[:, width:])
    offset = 0
    for name, size in zip(blocks, sizes):
        answers[name] = texts[offset:offset + size]
        offset += size
    return answers


@contextmanager
def _nothing() -> Iterator[None]:
    yield
