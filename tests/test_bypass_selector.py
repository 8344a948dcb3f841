"""The `bypass` selector (Arditi et al.'s choice of the direction to ablate), on a tiny random Llama.

Each row must be what the step's own plan does at that layer, measured independently here: the
ablation at every layer and the embedding, first-token refusal log-odds on validation harmful
prompts, first-token KL on validation harmless prompts.
"""

from __future__ import annotations

import pytest
import torch
from plans import MORE_HARMFUL, MORE_HARMLESS
from tiny_models import tiny_text_model

from steerpeft import Steerer
from steerpeft.errors import ConfigError, SelectionError, SteeringWarning
from steerpeft.evaluation.first_token import first_token_refusal_score, refusal_token_ids
from steerpeft.evaluation.kl import first_token_kl
from steerpeft.evaluation.runs import decision_logits
from steerpeft.extractors import DiffMeans
from steerpeft.inputs.text import encode_prompts
from steerpeft.interventions import Ablate
from steerpeft.plan import EMBEDDING
from steerpeft.scalers import ConstantScaler
from steerpeft.selectors import BypassSelector


@pytest.fixture(scope="module")
def llama():
    torch.set_num_threads(1)
    return tiny_text_model("llama")


def _steerer(**selector: object) -> Steerer:
    return Steerer(DiffMeans(), BypassSelector(candidates=[0, 1, 2], **selector), ConstantScaler(1.0),
                   Ablate(), positions="all", apply_layers="all", embedding=True, site="writers",
                   batch_size=4, validation_fraction=0.5)


def test_each_row_is_what_the_fitted_plan_does_on_the_validation_prompts(llama) -> None:
    model, tok = llama
    steerer = _steerer(max_kl=100.0, min_induce=-1e9)  # every layer within the limits
    plan = steerer.fit(model, tok, MORE_HARMFUL, MORE_HARMLESS)
    table = plan.metadata["steps"]["step"]["layer_scores"]
    chosen = next(row for row in table if row["chosen"])
    assert chosen["bypass"] == min(row["bypass"] for row in table)
    step = plan.steps[0]
    assert EMBEDDING in step.directions and len(step.directions) == 1 + 4  # every layer and the embedding
    harmful = encode_prompts(tok, steerer.split(MORE_HARMFUL)[1])
    harmless = encode_prompts(tok, steerer.split(MORE_HARMLESS)[1])
    ids = refusal_token_ids(tok)
    with torch.no_grad():
        base = decision_logits(model, harmless)
        with plan.apply(model):
            bypass = float(first_token_refusal_score(decision_logits(model, harmful), ids).mean())
            kl = float(first_token_kl(base, decision_logits(model, harmless)).mean())
    assert chosen["bypass"] == pytest.approx(bypass, abs=1e-4)
    assert chosen["kl"] == pytest.approx(kl, abs=1e-5) and kl > 0  # the ablation really changes the logits


def test_no_layer_within_the_limits_fails_with_reasons_or_falls_back_loudly(llama) -> None:
    model, tok = llama
    with pytest.raises(SelectionError, match=r"(?s)layer 0 \(bypass .*\): kl .* > 1e-09.*What to try"):
        _steerer(max_kl=1e-9, on_no_layer="fail").fit(model, tok, MORE_HARMFUL, MORE_HARMLESS)
    with pytest.warns(
        SteeringWarning, match="within the KL limit .else the lowest-KL layer. anyway"
    ):
        plan = _steerer(max_kl=1e-9).fit(model, tok, MORE_HARMFUL, MORE_HARMLESS)
    table = plan.metadata["steps"]["step"]["layer_scores"]
    assert all(row["excluded_by"] for row in table)
    chosen = next(row for row in table if row["chosen"])
    assert chosen["fallback"] and chosen["kl"] == min(
        row["kl"] for row in table
    )  # none within KL: the gentlest


def test_bad_options_are_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'best'"):
        BypassSelector(on_no_layer="bset")
    with pytest.raises(ConfigError, match="max_kl"):
        BypassSelector(max_kl=0)
