"""Scoring steered models: keyword refusal judge, first-token refusal score, KL, and `evaluate`.

- `is_refusal` / `refusal_rate` judge generated answers against `REFUSAL_PHRASES`;
- `first_token_refusal_score` is the log-odds of refusal-opening tokens (`refusal_token_ids`);
- `first_token_kl` measures how far steering moves the next-token distribution;
- `decision_logits` / `generate_texts` run the model; `evaluate` runs every condition on every set.
"""

from steerpeft.evaluation.evaluate import UNSTEERED, EvalReport, SetResult, evaluate
from steerpeft.evaluation.first_token import (
    DEFAULT_REFUSAL_OPENINGS,
    MAX_LOG_ODDS,
    first_token_refusal_score,
    refusal_token_ids,
)
from steerpeft.evaluation.judge import REFUSAL_PHRASES, add_refusal_phrases, is_refusal, refusal_rate
from steerpeft.evaluation.kl import first_token_kl
from steerpeft.evaluation.runs import decision_logits, generate_texts, last_token_index

__all__ = [
    "DEFAULT_REFUSAL_OPENINGS",
    "MAX_LOG_ODDS",
    "REFUSAL_PHRASES",
    "UNSTEERED",
    "EvalReport",
    "SetResult",
    "add_refusal_phrases",
    "decision_logits",
    "evaluate",
    "first_token_kl",
    "first_token_refusal_score",
    "generate_texts",
    "is_refusal",
    "last_token_index",
    "refusal_rate",
    "refusal_token_ids",
]
