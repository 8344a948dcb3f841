"""The MARS selector refuses layers it cannot use and says why; no silent fallback."""

from __future__ import annotations

import pytest
import torch
from plans import MORE_HARMFUL, MORE_HARMLESS
from tiny_models import tiny_text_model

from steerpeft import Steerer, load_recipe
from steerpeft.cli.describe import describe_plan_text
from steerpeft.errors import SelectionError, SteeringWarning
from steerpeft.extractors import DiffMeans
from steerpeft.interventions import AddDirection
from steerpeft.mars import MarsSelector, TrustRegionScaler
from steerpeft.mars.selector import exclusions
from steerpeft.report.metrics import plan_section, plan_warnings

LIMITS = {"kl": 0.1, "false_trigger": 0.05, "induce": 0.0}


@pytest.fixture(scope="module")
def llama():
    torch.set_num_threads(1)
    return tiny_text_model("llama")


def _row(**values: float) -> dict[str, float]:
    return {"tau": 0.5, "kl": 0.0, "false_trigger": 0.0, "induce": 0.1, **values}


def test_a_degenerate_traversal_gate_is_outside_the_limits() -> None:
    assert exclusions(_row(), LIMITS, "traversal") == []
    reasons = exclusions(_row(tau=1.004), LIMITS, "traversal")
    assert (
        len(reasons) == 1 and reasons[0].startswith("tau 1.004 >= 1") and "cannot move anything" in reasons[0]
    )
    assert exclusions(_row(tau=1.004), LIMITS, "beta") == []  # the beta form still acts past the centroid


def test_every_limit_names_itself() -> None:
    reasons = exclusions(_row(tau=2.0, kl=0.3, false_trigger=0.1, induce=-0.2), LIMITS, "traversal")
    assert [reason.split()[0] for reason in reasons] == ["tau", "kl", "false_trigger", "induce"]


def _steerer(form: str = "traversal", **selector: object) -> Steerer:
    return Steerer(
        DiffMeans(), MarsSelector(candidates=[1, 2], form=form, **selector), TrustRegionScaler(form=form),
        AddDirection(normalize=True), positions="decision", batch_size=4, validation_fraction=0.5,
    )


def test_a_fit_with_no_usable_layer_fails_and_says_which_limit_excluded_each(llama) -> None:
    model, tok = llama
    with pytest.raises(SelectionError) as caught:
        _steerer(limits={"induce": 1e6}).fit(model, tok, MORE_HARMFUL, MORE_HARMLESS)
    message = str(caught.value)
    assert "layer 1 (separation" in message and "layer 2 (separation" in message
    assert message.count("induce") >= 2 and "on_no_layer=best" in message and "What to try" in message


def test_the_fallback_is_loud_and_recorded(llama) -> None:
    model, tok = llama
    with pytest.warns(SteeringWarning, match="Using the best-separating layer anyway"):
        plan = _steerer(limits={"induce": 1e6}, on_no_layer="best").fit(
            model, tok, MORE_HARMFUL, MORE_HARMLESS
        )
    table = plan.metadata["steps"]["step"]["layer_scores"]
    chosen = [row for row in table if row["chosen"]]
    assert len(chosen) == 1 and chosen[0]["fallback"] and not chosen[0]["within_limits"]
    warnings = plan_warnings(plan_section(plan))
    assert any("taken anyway" in warning for warning in warnings)
    assert "warning      no candidate layer met" in describe_plan_text(plan, plan_section(plan), "plan")


def test_a_fit_within_limits_records_no_fallback(llama) -> None:
    model, tok = llama
    # the beta form acts past the harmful centroid too, so tau >= 1 (likely on a random tiny model) is no
    # exclusion
    plan = _steerer("beta", limits={"kl": 100.0, "false_trigger": 1.0, "induce": -1e6}).fit(
        model, tok, MORE_HARMFUL, MORE_HARMLESS
    )
    table = plan.metadata["steps"]["step"]["layer_scores"]
    assert not any(row["fallback"] for row in table)
    assert all(row["within_limits"] == (row["excluded_by"] == []) for row in table)


def test_a_bad_fallback_choice_is_refused() -> None:
    from steerpeft.errors import ConfigError

    with pytest.raises(ConfigError, match="Did you mean 'best'"):
        MarsSelector(on_no_layer="bset")


def test_a_list_override_replaces_a_range_mapping() -> None:
    recipe = load_recipe("mars", ["steps.0.selector.candidates=[14]", "steps.0.selector.limits={kl: 0.2}"])
    selector = recipe.config["steps"][0]["selector"]
    assert selector["candidates"] == [14]
    assert selector["limits"] == {"kl": 0.2, "false_trigger": 0.05, "induce": 0.0}  # mappings still merge
    assert recipe.steerers()[0].selector.candidate_layers(24) == [14]


@pytest.mark.parametrize("form", ["traversal", "beta"])
def test_the_shared_prefix_gives_the_table_of_full_forwards(llama, form) -> None:
    model, tok = llama
    tables = []
    for shared in (True, False):
        steerer = _steerer(
            form, limits={"kl": 100.0, "false_trigger": 1.0, "induce": -1e6}, on_no_layer="best",
            shared_prefix=shared,
        )
        plan = steerer.fit(model, tok, MORE_HARMFUL, MORE_HARMLESS)
        tables.append(plan.metadata["steps"]["step"]["layer_scores"])
    fast, slow = tables
    assert [row["chosen"] for row in fast] == [row["chosen"] for row in slow]
    for a, b in zip(fast, slow, strict=True):
        for key in ("kl", "induce", "separation", "tau", "false_trigger"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    # the comparison could fail: the candidates really move the logits (the traversal gate of a random model
    # cannot open past tau >= 1, so only the beta form shows a KL)
    assert any(row["induce"] != 0 for row in fast) and (
        form == "traversal" or any(row["kl"] > 0 for row in fast)
    )
