"""The trust region's target and hard gate, and the selector that scores layers by refusal.

Against references written out from the formulas: h' = h + g * ReLU(p- + T s - <h,u>) u with g = 1[t > tau]
(hard) or clip((t - tau) / (1 - tau), 0, 1) (ramp); T calibrated as the smallest grid value at which the
fit harmful prompts' greedy first token is a refusal opening for the requested share.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from plans import MORE_HARMFUL, MORE_HARMLESS
from tiny_models import tiny_text_model

from steerpeft import Plan, Steerer
from steerpeft.architectures import decoder_layers, resolve_layout
from steerpeft.errors import ConfigError
from steerpeft.evaluation.first_token import refusal_token_ids
from steerpeft.extractors import DiffMeans
from steerpeft.inputs.text import encode_prompts
from steerpeft.interventions import AddDirection
from steerpeft.mars import LayerRegion, MarsSelector, TrustRegionScaler
from steerpeft.mars.selector import exclusions
from steerpeft.mars.target import GRID, refusal_flags
from steerpeft.plan import SteeringStep
from steerpeft.provenance import model_info
from steerpeft.selectors.scores import binomial_lower_bound

LAYER = 1


@pytest.fixture(scope="module")
def llama():
    torch.set_num_threads(1)
    return tiny_text_model("llama")


def _states(model, batch) -> torch.Tensor:
    captured = {}
    handle = decoder_layers(model, resolve_layout(model))[LAYER].register_forward_hook(
        lambda m, a, o: captured.__setitem__("h", (o[0] if isinstance(o, tuple) else o).clone()))
    with torch.no_grad():
        model(**batch)
    handle.remove()
    return captured["h"]


def _plan(model, raw, p_minus, p_plus, target, tau, gate) -> Plan:
    layout = resolve_layout(model)
    scaler = TrustRegionScaler(tau=tau, gate=gate, target=target)
    scaler.regions[LAYER] = LayerRegion(raw / raw.norm(), p_plus, p_minus, float(raw.norm()),
                                        torch.zeros(3, layout.hidden_size), target=target)
    return Plan([SteeringStep({LAYER: raw}, AddDirection(normalize=True), scaler, "decision", "mars")],
                model_info(model, layout))


@pytest.mark.parametrize("gate", ["hard", "ramp"])
@pytest.mark.parametrize("target", [1.0, 2.75])
def test_the_gate_raises_open_rows_to_the_target_and_leaves_closed_rows_alone(llama, gate, target) -> None:
    model, tok = llama
    batch = encode_prompts(tok, MORE_HARMFUL)
    plain = _states(model, batch)
    raw = torch.randn(plain.shape[-1], generator=torch.Generator().manual_seed(5))
    unit = raw / raw.norm()
    last = plain[:, -1] @ unit
    p_minus, p_plus = float(last.min()) - 1.0, float(last.max()) + 1.0
    t = (last - p_minus) / (p_plus - p_minus)
    tau = float(t.median())
    with torch.no_grad(), _plan(model, raw, p_minus, p_plus, target, tau, gate).apply(model):
        steered = _states(model, batch)
    for row in range(len(MORE_HARMFUL)):
        opened = float(t[row]) > tau
        g = (
            (1.0 if opened else 0.0) if gate == "hard"
            else min(max((float(t[row]) - tau) / (1 - tau), 0.0), 1.0)
        )
        push = g * max(p_minus + target * (p_plus - p_minus) - float(last[row]), 0.0)
        expected = plain[row, -1] + push * unit
        assert (steered[row, -1] - expected).abs().max() < 1e-4, row
        assert torch.equal(steered[row, :-1], plain[row, :-1])  # the decision position only
        if not opened:
            assert torch.equal(steered[row], plain[row])  # a closed gate leaves the row bit for bit
    if gate == "hard":  # every open row lands exactly on the target level
        opened = t > tau
        levels = (steered[opened, -1] @ unit - p_minus) / (p_plus - p_minus)
        assert torch.allclose(levels, torch.full_like(levels, target), atol=1e-3)


def test_bad_target_and_gate_are_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'calibrated'"):
        TrustRegionScaler(target="calibrate")
    with pytest.raises(ConfigError, match="positive number"):
        TrustRegionScaler(target=-1.0)
    with pytest.raises(ConfigError, match="Did you mean 'hard'"):
        TrustRegionScaler(gate="hrad")


def _steerer(limits: dict[str, float] | None = None, **scaler: object) -> Steerer:
    return Steerer(
        DiffMeans(),
        MarsSelector(candidates=[1, 2], on_no_layer="best", score="refusal", limits=limits or {}),
        TrustRegionScaler(**scaler), AddDirection(normalize=True), positions="decision", batch_size=4,
        validation_fraction=0.5,
    )


def test_the_calibrated_target_is_the_smallest_grid_level_reaching_the_share(llama) -> None:
    model, tok = llama
    plan = _steerer(target="calibrated", target_share=0.5, gate="hard").fit(
        model, tok, MORE_HARMFUL, MORE_HARMLESS
    )
    scaler = plan.steps[0].scaler
    layer = plan.steps[0].layers[0]
    region = scaler.regions[layer]
    row = next(r for r in plan.metadata["steps"]["step"]["layer_scores"] if r["layer"] == layer)
    assert row["target"] == region.target
    # the share at every grid level, measured by hand with full forwards on the fit's harmful prompts
    fit_harmful = Steerer(validation_fraction=0.5).split(MORE_HARMFUL)[0]
    batch = encode_prompts(tok, fit_harmful)
    ids = torch.tensor(refusal_token_ids(tok))
    shares = []
    for level in GRID:
        probe = dataclasses.replace(scaler, tau=-1e9, gate="hard", recenter="none")
        probe.regions[layer] = dataclasses.replace(region, target=level)
        step = SteeringStep(
            {layer: plan.steps[0].directions[layer]}, AddDirection(normalize=True), probe, "decision"
        )
        with torch.no_grad(), Plan([step], plan.model_info).apply(model):
            shares.append(float(refusal_flags(model(**batch).logits[:, -1], ids).double().mean()))
    reached = [level for level, share in zip(GRID, shares, strict=True) if share >= 0.5]
    if not reached:
        assert region.target == 1.0 and row["target_reached"] is False
        return
    assert row["target_reached"] and row["target_share"] == pytest.approx(shares[GRID.index(region.target)])
    assert row["target_share"] >= 0.5
    if shares == sorted(shares):  # monotone: the bisection finds the smallest level exactly
        assert region.target == reached[0]


def test_the_refusal_score_picks_the_layer_that_refuses_most(llama) -> None:
    model, tok = llama
    relaxed = {"kl": 100.0, "false_trigger": 1.0, "induce": -1e6}  # every layer within the limits
    plan = _steerer(relaxed, target=2.0, gate="hard", form="beta").fit(
        model, tok, MORE_HARMFUL, MORE_HARMLESS
    )
    table = plan.metadata["steps"]["step"]["layer_scores"]
    assert all(row["within_limits"] for row in table)
    assert all("refusal" in row and "refusal_unsteered" in row for row in table)
    chosen = next(row for row in table if row["chosen"])
    assert chosen["refusal"] == max(row["refusal"] for row in table)


def test_layers_the_recorded_states_exclude_cost_no_gate_forwards(llama) -> None:
    """tau >= 1 or too many false triggers exclude a layer before its target, KL and refusal are measured;
    the chosen layer is always measured in full (a fallback too)."""
    model, tok = llama
    plan = _steerer(target="calibrated", gate="hard").fit(model, tok, MORE_HARMFUL, MORE_HARMLESS)
    table = plan.metadata["steps"]["step"]["layer_scores"]
    for row in table:
        assert row["induce"] is not None
        if row["chosen"]:
            assert row["kl"] is not None and row["target"] is not None and "refusal" in row
        elif row["kl"] is None:
            assert row["excluded_by"] and not any(reason.startswith("kl") for reason in row["excluded_by"])
            assert row["target"] is None and "refusal" not in row


def test_a_false_trigger_excludes_a_layer_only_when_the_bound_passes_the_limit() -> None:
    limits = {"kl": 0.1, "false_trigger": 0.05, "induce": 0.0}
    base = {"tau": 0.5, "kl": 0.0, "induce": 0.1}
    for triggers, excluded in ((1, False), (3, False), (4, True)):
        row = {
            **base, "false_trigger": triggers / 18, "false_trigger_bound": binomial_lower_bound(triggers, 18),
        }
        assert bool(exclusions(row, limits, "traversal", 18)) == excluded, triggers
    assert binomial_lower_bound(0, 18) == 0.0
    assert binomial_lower_bound(9, 18) == pytest.approx(0.2912, abs=1e-4)  # Beta(0.05; 9, 10): one-sided 95%


def test_plans_saved_before_targets_end_at_the_centroid(llama) -> None:
    scaler = TrustRegionScaler(tau=0.5)
    hidden = 32
    state = {"1.unit": torch.ones(hidden) / hidden ** 0.5, "1.offsets": torch.zeros(3, hidden),
             "1.centroids": torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64)}
    scaler.load_state_dict(state)
    assert scaler.regions[1].target == 1.0 and scaler.gate == "ramp"
