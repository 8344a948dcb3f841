"""MARS evaluation that reuses the unsteered run: `evaluate` with the MARS conditions, made cheaper.

Gives the same `EvalReport` as `evaluate(model, processor, sets, conditions(plan, model, name,
ablations))` (`steerpeft.mars.evaluation`), computed differently where a condition steers the
decision position only (the plan, no re-centering, fixed strength):

- decision logits: one unsteered prefix per set (`DecisionPrefix`), then one token per condition,
  instead of one full forward per condition and batch;
- answers: a row whose gate is closed (t <= tau, from the decision state the unsteered step
  records) gets the unsteered answer, which it would repeat bit for bit; only open rows are
  generated.  Without re-centering, text rows are the plan's rows exactly (the text offset is
  zero), so they reuse its answers too;
- with `share_prefill`, those conditions and the unsteered run generate from one unsteered
  prefill of each batch (`GenerationPrefix`);
- with `stack`, the unsteered rows and the rows each of those conditions must generate run as
  one batch, a block per condition steered by its own plan (`generate_stacked`): decoding a few
  more rows costs far less than another call.

The "all tokens" ablation steers every token, so it runs as `evaluate` runs it.  Plans that do
not steer the decision position only are refused (use `evaluate`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from steerpeft.architectures import resolve_layout, unwrap_model
from steerpeft.callbacks import Callback, Runner, call_hook, stage
from steerpeft.errors import ConfigError
from steerpeft.evaluation.decision_prefix import (
    SEQUENCE_KEYS,
    DecisionOutput,
    DecisionPrefix,
    require_decision_plan,
)
from steerpeft.evaluation.evaluate import UNSTEERED, EvalReport, Evaluation, SetResult, _set_result
from steerpeft.evaluation.first_token import first_token_refusal_score, refusal_token_ids
from steerpeft.evaluation.kl import first_token_kl
from steerpeft.evaluation.reuse import DEFAULT_MARGIN, GenerationPrefix, generate_rows, rows_plan_can_change
from steerpeft.evaluation.runs import decision_logits, generate_texts
from steerpeft.evaluation.stacked import Block, generate_stacked
from steerpeft.inputs.modality import Modality, row_modalities
from steerpeft.mars.evaluation import at_all_tokens, fixed_strength, without_recentering
from steerpeft.mars.scaler import TrustRegionScaler
from steerpeft.plan import Plan


def layers_read(plan: Plan) -> list[int]:
    """Decoder layers whose decision states decide which rows a plan can change."""
    layers: set[int] = set()
    for step in plan.steps:
        layers.update(layer for layer in step.layers if layer >= 0)
        layers.update(step.scaler.observed_layers())
    return sorted(layers)


def plan_row_modalities(model: Any, plan: Plan, input_ids: torch.Tensor) -> torch.Tensor | None:
    """Each row's `Modality` as the plan's session reads it; None for text-only models."""
    layout = resolve_layout(unwrap_model(model))
    return row_modalities(input_ids, layout.image_token_id, layout.video_token_id,
                          plan.model_info.get("video_frame_token_id"))


def _text_offsets_zero(plan: Plan) -> bool:
    return all(bool(step.scaler._region(layer).offsets[0].abs().max() == 0)
               for step in plan.steps if isinstance(step.scaler, TrustRegionScaler) for layer in step.layers)


def _split(tensor: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    return list(torch.split(tensor, list(sizes)))


@torch.no_grad()
def evaluate_mars(
    model: Any,
    processor: Any,
    sets: Mapping[str, Sequence[dict[str, torch.Tensor]]],
    plan: Plan,
    *,
    name: str = "steered",
    ablations: bool = True,
    generate: bool = True,
    max_new_tokens: int = 32,
    share_prefill: bool = True,
    stack: bool = True,
    margin: float = DEFAULT_MARGIN,
    prefix_rows: int = 256,
    stats: dict[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
    runner: Runner | None = None,
) -> EvalReport:
    """The MARS conditions on every set, as `evaluate` would score them (see the module docstring).

    `margin`: rows with t > tau - margin are generated (see `rows_plan_can_change`).
    `stack`: the unsteered rows and every decision-position condition's rows generate in one call
    per batch, each block under its own plan (`generate_stacked`); else one call per condition.
    `prefix_rows`: consecutive batches share one decision prefix up to this many rows (memory: the
    prefix keeps their KV cache, the size of one generation's cache for that many rows).
    `stats`, if given, is filled with what was reused: `generated[condition]` (rows generated),
    `rows` (rows per condition), and `states[set_name][layer]`, the unsteered decision states
    [rows, hidden] of the plan's layers (the gate values t of the report follow from them with
    `TrustRegionScaler.gate_of_states`, no second recording needed).
    `callbacks` get the evaluation hooks (one condition stage, "all conditions", a tick per batch).
    """
    require_decision_plan(plan)
    if name == UNSTEERED:
        raise ConfigError(f"The steered condition may not be called {UNSTEERED!r}.")
    variants: dict[str, Plan] = {name: plan}
    everywhere: tuple[str, Plan] | None = None
    if ablations:
        variants[f"{name} (no re-centering)"] = without_recentering(plan)
        variants[f"{name} (fixed strength)"] = fixed_strength(plan)
        everywhere = (f"{name} (all tokens)", at_all_tokens(plan))
    plain_name = f"{name} (no re-centering)"
    token_ids = refusal_token_ids(processor)
    layers = layers_read(plan)
    names = [UNSTEERED, *variants, *([everywhere[0]] if everywhere else [])]
    rows: dict[str, dict[str, SetResult]] = {condition: {} for condition in names}
    counts = {condition: 0 for condition in names}
    runner = runner or Evaluation()
    stage_name = f"{len(names)} conditions"
    batch_count = sum(len(list(batches)) for batches in sets.values())
    with stage(callbacks, runner, "evaluate"):
        call_hook(callbacks, runner, "on_evaluate_start", conditions=names, total=batch_count)
        call_hook(callbacks, runner, "on_condition_start", condition=stage_name, total=batch_count)
        report = _evaluate_sets(
            model, processor, sets, plan, variants, everywhere, names, plain_name, token_ids, layers, rows,
            counts, generate, max_new_tokens, share_prefill, stack, margin, prefix_rows, stats,
            lambda set_name, size: call_hook(
                callbacks, runner, "on_eval_batch_end", condition=stage_name, set_name=set_name, rows=size
            ),
        )
        call_hook(callbacks, runner, "on_condition_end", condition=stage_name)
        call_hook(callbacks, runner, "on_evaluate_end", report=report)
    return report


def _evaluate_sets(
    model: Any, processor: Any, sets: Mapping[str, Sequence[dict[str, torch.Tensor]]], plan: Plan,
    variants: dict[str, Plan], everywhere: tuple[str, Plan] | None, names: list[str], plain_name: str,
    token_ids: Any, layers: list[int], rows: dict[str, dict[str, SetResult]], counts: dict[str, int],
    generate: bool, max_new_tokens: int, share_prefill: bool, stack: bool, margin: float, prefix_rows: int,
    stats: dict[str, Any] | None, on_batch: Callable[[str, int], None],
) -> EvalReport:
    total = 0
    for set_name, batches in sets.items():
        batches = list(batches)
        unsteered, logits, sizes = _decision_logits(model, batches, variants, everywhere, layers, prefix_rows)
        total += sum(sizes)
        states = {layer: _split(value, sizes) for layer, value in unsteered.states.items()}
        if stats is not None:
            stats.setdefault("states", {})[set_name] = {
                layer: value.cpu() for layer, value in unsteered.states.items()
            }
        texts: dict[str, list[str]] = {condition: [] for condition in names}
        if generate:
            for index, batch in enumerate(batches):
                batch_states = {layer: parts[index] for layer, parts in states.items()}
                answers, generated = _answers(model, processor, batch, plan, variants, everywhere, plain_name,
                                              batch_states, max_new_tokens, share_prefill, stack, margin)
                for condition in names:
                    texts[condition] += answers[condition]
                    counts[condition] += generated[condition]
                on_batch(set_name, int(batch["input_ids"].shape[0]))
        else:
            for batch in batches:
                on_batch(set_name, int(batch["input_ids"].shape[0]))
        for condition in names:
            scores = first_token_refusal_score(logits[condition], token_ids).tolist()
            kls = (
                None if condition == UNSTEERED
                else first_token_kl(logits[UNSTEERED], logits[condition]).tolist()
            )
            rows[condition][set_name] = _set_result(set_name, scores, kls, texts[condition], generate)
    if stats is not None:
        stats["generated"] = counts
        stats["rows"] = total
    return EvalReport(rows=rows, baseline=UNSTEERED)


def _decision_logits(model: Any, batches: list[dict[str, torch.Tensor]], variants: dict[str, Plan],
                     everywhere: tuple[str, Plan] | None, layers: list[int], prefix_rows: int,
                     ) -> tuple[DecisionOutput, dict[str, torch.Tensor], list[int]]:
    """Unsteered decision step (logits and states), every condition's logits, and the rows per batch."""
    groups: list[list[dict[str, torch.Tensor]]] = []
    for batch in batches:
        if groups and sum(len(b["input_ids"]) for b in groups[-1]) + len(batch["input_ids"]) <= prefix_rows:
            groups[-1].append(batch)
        else:
            groups.append([batch])
    outputs, parts, sizes = [], [], []
    for group in groups:
        prefix = DecisionPrefix(model, group)
        outputs.append(prefix.run(None, record_layers=layers))
        parts.append({condition: prefix.logits(variant) for condition, variant in variants.items()})
        sizes += prefix.rows_per_batch
    unsteered = DecisionOutput(torch.cat([o.logits for o in outputs]),
                               {layer: torch.cat([o.states[layer] for o in outputs]) for layer in layers})
    logits = {UNSTEERED: unsteered.logits}
    logits.update({condition: torch.cat([part[condition] for part in parts]) for condition in variants})
    if everywhere is not None:
        with everywhere[1].apply(model):
            logits[everywhere[0]] = torch.cat([decision_logits(model, batch) for batch in batches])
    return unsteered, logits, sizes


def _answers(
    model: Any, processor: Any, batch: dict[str, torch.Tensor], plan: Plan, variants: dict[str, Plan],
    everywhere: tuple[str, Plan] | None, plain_name: str, states: dict[int, torch.Tensor],
    max_new_tokens: int, share_prefill: bool, stack: bool, margin: float,
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Every condition's answers for one batch, generating only rows that can differ; and how many were
    generated."""
    prefix = GenerationPrefix(model, batch) if share_prefill else None
    modality = plan_row_modalities(model, plan, batch["input_ids"])
    count = int(batch["input_ids"].shape[0])
    steered = next(iter(variants))
    changed: dict[str, torch.Tensor] = {}
    text_rows = None
    for condition, variant in variants.items():
        changed[condition] = rows_plan_can_change(variant, states, modality, margin).cpu()
        if condition == plain_name and _text_offsets_zero(plan):
            # Text rows: re-centering subtracts the zero text offset, so this condition is the plan itself.
            text_rows = (
                torch.ones(count, dtype=torch.bool) if modality is None
                else (modality == int(Modality.TEXT)).cpu()
            )
            changed[condition] &= ~text_rows
    media = any(isinstance(v, torch.Tensor) and k not in SEQUENCE_KEYS for k, v in batch.items())
    answers: dict[str, list[str]] = {}
    if stack and (prefix is not None or not media):
        blocks = {UNSTEERED: Block(None, torch.arange(count))}
        blocks.update({condition: Block(variant, changed[condition].nonzero().flatten())
                       for condition, variant in variants.items()})
        fresh = generate_stacked(model, processor, batch, blocks, max_new_tokens, prefix)
        base = fresh[UNSTEERED]
        answers[UNSTEERED] = base
        for condition in variants:
            texts = _reused(base, answers.get(steered), text_rows if condition == plain_name else None)
            for row, text in zip(changed[condition].nonzero().flatten().tolist(), fresh.get(condition, [])):
                texts[row] = text
            answers[condition] = texts
    else:
        if prefix is not None:
            base = prefix.generate(processor, max_new_tokens=max_new_tokens)
        else:
            base = generate_texts(model, processor, batch, max_new_tokens)
        answers[UNSTEERED] = base
        for condition, variant in variants.items():
            reuse = _reused(base, answers.get(steered), text_rows if condition == plain_name else None)
            answers[condition] = generate_rows(
                model, processor, batch, changed[condition], reuse, max_new_tokens, variant, prefix
            )
    generated = {UNSTEERED: count, **{condition: int(rows.sum()) for condition, rows in changed.items()}}
    if everywhere is not None:
        with everywhere[1].apply(model):
            answers[everywhere[0]] = generate_texts(model, processor, batch, max_new_tokens)
        generated[everywhere[0]] = count
    return answers, generated


def _reused(base: list[str], steered: list[str] | None, text_rows: torch.Tensor | None) -> list[str]:
    """Answers a condition reuses: the plan's own on `text_rows` (where it is the plan), else the
    unsteered."""
    if text_rows is None or steered is None:
        return list(base)
    return [steered[i] if text_rows[i] else text for i, text in enumerate(base)]
