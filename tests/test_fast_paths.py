"""The fast paths of the main job change its time, not its results (the embedded SmolLM2, MARS recipe).

The layer sweep's KL and induce scores come from one shared prefill and one token per candidate;
the evaluation reuses the unsteered answers of rows whose gate stays closed and shares each
prompt's prefill between conditions.  Here both are run with and without the fast paths on the
real model: the same layer, tau and table, the same answers, scores within float noise.
"""

from __future__ import annotations

import pytest
import torch
from plans import TINY_FALLBACK

from steerpeft.models import load_model
from steerpeft.recipes import load_recipe
from steerpeft.run import eval_prompts, evaluate_plan

pytestmark = pytest.mark.slow
OVERRIDES = [
    "data.limit=60", "steps.0.selector.candidates=[16, 17, 18]", TINY_FALLBACK, "eval.max_new_tokens=6",
    # the beta form acts for every t > tau, so gates open on some rows and stay shut on others
    "steps.0.scaler.form=beta", "steps.0.selector.form=beta",
    "eval.prompts={positive: builtin:harmful, negative: builtin:harmless, limit: 12}",
]


@pytest.fixture(scope="module")
def smollm2():
    torch.set_num_threads(2)
    return load_model()


@pytest.fixture(scope="module")
def plans(smollm2):
    model, tok = smollm2
    return {shared: load_recipe("mars", [*OVERRIDES, f"steps.0.selector.shared_prefix={str(shared).lower()}"]
                                ).fit(model, tok) for shared in (True, False)}


def test_the_sweep_gives_the_same_plan_and_scores_with_and_without_the_shared_prefix(plans) -> None:
    fast, slow = (plans[shared].metadata["steps"]["mars"]["layer_scores"] for shared in (True, False))
    assert plans[True].steps[0].layers == plans[False].steps[0].layers
    assert plans[True].steps[0].scaler.tau == pytest.approx(plans[False].steps[0].scaler.tau, abs=1e-9)
    assert [row["within_limits"] for row in fast] == [row["within_limits"] for row in slow]
    for a, b in zip(fast, slow, strict=True):
        for key in ("separation", "tau", "false_trigger", "t_harmful_mean", "t_harmless_mean"):
            assert a[key] == b[key], key  # computed from the same recorded states
        assert (a["kl"] == pytest.approx(b["kl"], abs=1e-6)
                and a["induce"] == pytest.approx(b["induce"], abs=1e-4))
    assert any(row["induce"] > 0 for row in fast)  # the candidates really move the logits


def test_the_evaluation_gives_the_same_report_with_and_without_reuse(smollm2, plans) -> None:
    model, tok = smollm2
    recipe = load_recipe("mars", OVERRIDES)
    harmful, harmless, _ = eval_prompts(recipe)
    results = {}
    for reuse in (True, False):
        options = load_recipe("mars", [*OVERRIDES, f"eval.reuse={str(reuse).lower()}"]).section("eval")
        results[reuse] = evaluate_plan(
            plans[True], model, tok, harmful, harmless, name="mars", options=options, batch_size=16,
            progress=False,
        )
    (fast, fast_gate, _, reused), (slow, slow_gate, _, none) = results[True], results[False]
    assert none is None and reused is not None
    # closed gates really reused the unsteered answers, open ones were generated
    assert 0 < reused["generated"]["mars"] < reused["rows"]
    for condition, by_set in slow.rows.items():
        for set_name, expected in by_set.items():
            got = fast.rows[condition][set_name]
            assert got.texts == expected.texts, (condition, set_name)
            assert got.scores == pytest.approx(expected.scores, abs=1e-4)
            if expected.kl is not None:
                assert got.kl == pytest.approx(expected.kl, abs=1e-5)
    for set_name, summary in slow_gate["sets"].items():
        assert fast_gate["sets"][set_name]["recentered"]["above_tau"] == summary["recentered"]["above_tau"]
