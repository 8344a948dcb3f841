"""Evaluate steering conditions on prompt sets: refusal rate, first-token score, KL.

Every condition (unsteered, one or more steering plans, ablations of them) runs
on the same batches, so the numbers are comparable row by row; KL is measured
against the unsteered model's logits on the very same batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from steerpeft.callbacks import Callback, ProgressBar, Runner, call_hook, stage
from steerpeft.errors import ConfigError, DataError
from steerpeft.evaluation.first_token import first_token_refusal_score, refusal_token_ids
from steerpeft.evaluation.judge import is_refusal
from steerpeft.evaluation.kl import first_token_kl
from steerpeft.evaluation.runs import decision_logits, generate_texts

UNSTEERED = "unsteered"
"""Name of the baseline condition when `conditions` lists none."""

ConditionFactory = Callable[[], AbstractContextManager[Any]]


@dataclass
class Evaluation:
    """The runner callbacks see during a stand-alone `evaluate` call."""

    name: str = "evaluate"


@dataclass
class SetResult:
    """Scores of one condition on one prompt set (e.g. "harmful/text", "harmless/image")."""

    name: str
    n: int
    refusal_rate: float | None
    """Keyword judge on generated answers; None when generation is off."""
    first_token_score: float
    """Mean first-token refusal log-odds."""
    kl: float | None
    """Mean first-token KL vs the unsteered model; None for the unsteered run itself."""
    refusals: list[bool] | None
    scores: list[float]
    texts: list[str] | None


@dataclass
class EvalReport:
    """Results per condition and set; the baseline condition comes first."""

    rows: dict[str, dict[str, SetResult]]
    baseline: str = UNSTEERED

    def table(self) -> list[dict[str, Any]]:
        """One flat dict per (condition, set): the summary numbers, no per-prompt lists."""
        return [
            {
                "condition": condition,
                "set": result.name,
                "n": result.n,
                "refusal_rate": result.refusal_rate,
                "first_token_score": result.first_token_score,
                "kl": result.kl,
            }
            for condition, results in self.rows.items()
            for result in results.values()
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the summary table and every per-prompt result."""
        return {
            "baseline": self.baseline,
            "table": self.table(),
            "rows": {c: {s: asdict(r) for s, r in results.items()} for c, results in self.rows.items()},
        }


def _batch_size(batch: Mapping[str, Any], set_name: str) -> int:
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise DataError(f"Every batch of set {set_name!r} needs a 2-D attention_mask tensor [batch, seq].")
    return int(mask.shape[0])


def _ordered_conditions(
    conditions: Mapping[str, ConditionFactory | None],
) -> tuple[str, list[tuple[str, ConditionFactory | None]]]:
    baselines = [name for name, factory in conditions.items() if factory is None]
    if len(baselines) > 1:
        raise ConfigError(f"Only one condition may be the unsteered model (None), got {baselines}.")
    if baselines:
        baseline = baselines[0]
    elif UNSTEERED in conditions:
        raise ConfigError(
            f"The condition {UNSTEERED!r} steers the model, but that name is kept for the unsteered "
            "baseline: rename it, or map it to None."
        )
    else:
        baseline = UNSTEERED
    ordered: list[tuple[str, ConditionFactory | None]] = [(baseline, None)]
    ordered += [(name, f) for name, f in conditions.items() if f is not None]
    return baseline, ordered


def _enter(name: str, factory: ConditionFactory | None) -> AbstractContextManager[Any]:
    if factory is None:
        return nullcontext()
    if not callable(factory):
        raise ConfigError(f"Condition {name!r} must be a zero-argument callable returning a context manager.")
    manager = factory()
    if not (hasattr(manager, "__enter__") and hasattr(manager, "__exit__")):
        raise ConfigError(
            f"Condition {name!r} returned {type(manager).__name__}, not a context manager; "
            "use e.g. `lambda: plan.apply(model)`."
        )
    return manager


def evaluate(
    model: nn.Module,
    tokenizer_or_processor: Any,
    sets: Mapping[str, Sequence[dict[str, torch.Tensor]]],
    conditions: Mapping[str, ConditionFactory | None],
    *,
    generate: bool = True,
    max_new_tokens: int = 32,
    progress: bool = True,
    callbacks: Sequence[Callback] | None = None,
    runner: Runner | None = None,
) -> EvalReport:
    """Score every condition on every prompt set.

    `sets` maps a set name to already-built batches (dicts of tensors with an
    `attention_mask`; left padding if `generate`).  `conditions` maps a name to
    a zero-argument factory of a context manager that steers the model while
    open (`lambda: plan.apply(model)`), or to None for the unsteered model.  The
    unsteered baseline runs first, as "unsteered" when not listed, because KL
    is measured against its logits.  Per batch: one forward for the decision
    logits (first-token score, KL) and, if `generate`, greedy answers judged by
    `is_refusal`.  The model should be in eval mode.

    Progress goes through the evaluation hooks of `callbacks` (default: a `ProgressBar`, silent
    when `progress` is False), called with `runner` (default: an `Evaluation` named "evaluate").
    """
    if not sets:
        raise DataError("evaluate needs at least one prompt set; `sets` is empty.")
    sizes: dict[str, list[int]] = {}
    for set_name, batches in sets.items():
        if len(batches) == 0:
            raise DataError(f"Prompt set {set_name!r} has no batches.")
        sizes[set_name] = [_batch_size(b, set_name) for b in batches]
    baseline, ordered = _ordered_conditions(conditions)
    token_ids = refusal_token_ids(tokenizer_or_processor)
    reference: dict[tuple[str, int], torch.Tensor] = {}
    rows: dict[str, dict[str, SetResult]] = {}

    callbacks = [ProgressBar(disable=None if progress else True)] if callbacks is None else list(callbacks)
    runner = runner or Evaluation()
    per_condition = sum(len(b) for b in sets.values())
    with stage(callbacks, runner, "evaluate"):
        call_hook(callbacks, runner, "on_evaluate_start", conditions=[name for name, _ in ordered],
                  total=len(ordered) * per_condition)
        for condition, factory in ordered:
            call_hook(callbacks, runner, "on_condition_start", condition=condition, total=per_condition)
            results: dict[str, SetResult] = {}
            with _enter(condition, factory):
                for set_name, batches in sets.items():
                    scores: list[float] = []
                    kls: list[float] = []
                    texts: list[str] = []
                    for index, batch in enumerate(batches):
                        logits = decision_logits(model, batch)  # scores and KL reduce on the model's device
                        scores += first_token_refusal_score(logits, token_ids).tolist()
                        if factory is None:
                            reference[(set_name, index)] = logits
                        else:
                            kls += first_token_kl(reference[(set_name, index)], logits).tolist()
                        if generate:
                            texts += generate_texts(model, tokenizer_or_processor, batch, max_new_tokens)
                        call_hook(
                            callbacks, runner, "on_eval_batch_end", condition=condition, set_name=set_name,
                            rows=sizes[set_name][index],
                        )
                    results[set_name] = _set_result(
                        set_name, scores, None if factory is None else kls, texts, generate
                    )
            rows[condition] = results
            call_hook(callbacks, runner, "on_condition_end", condition=condition)
        report = EvalReport(rows=rows, baseline=baseline)
        call_hook(callbacks, runner, "on_evaluate_end", report=report)
    return report


def _set_result(
    name: str, scores: list[float], kls: list[float] | None, texts: list[str], generated: bool
) -> SetResult:
    refusals = [is_refusal(t) for t in texts] if generated else None
    return SetResult(
        name=name,
        n=len(scores),
        refusal_rate=sum(refusals) / len(refusals) if refusals else None,
        first_token_score=sum(scores) / len(scores),
        kl=sum(kls) / len(kls) if kls is not None else None,
        refusals=refusals,
        scores=scores,
        texts=texts if generated else None,
    )
