"""DecisionPrefix: decision logits from one prefilled prefix equal full forwards under each plan."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_image, tiny_text_model, tiny_vlm

from steerpeft.architectures import resolve_layout
from steerpeft.errors import ConfigError, DataError
from steerpeft.evaluation import decision_logits
from steerpeft.evaluation.decision_prefix import DecisionPrefix, decision_logits_per_plan, fork_cache
from steerpeft.inputs.text import encode_prompts
from steerpeft.interventions import AddDirection, Clamp
from steerpeft.mars import LayerRegion, TrustRegionScaler
from steerpeft.plan import Plan, SteeringStep
from steerpeft.positions import DecisionPosition
from steerpeft.provenance import model_info
from steerpeft.recording import ActivationRecorder
from steerpeft.scalers import ConditionalScaler, ConstantScaler

TOL = 1e-4
LAYER = 1
PROMPTS_A = [
    "Hi", "Tell me a long story about a dragon and a knight, please, with a happy end", "What is 2+2?",
]
PROMPTS_B = ["Short one", "Name three colours."]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _direction(hidden: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(hidden, generator=torch.Generator().manual_seed(seed))


def _mars_plan(model, processor, states: torch.Tensor, raw: torch.Tensor, offsets: torch.Tensor | None = None,
               recenter: str = "measure", form: str = "beta") -> Plan:
    """A trust region placed on the rows' own projections, tau at their median: some gates open, some closed.

    The `beta` form (strength up to rho * |r|) moves the tiny models' logits clearly; `traversal` barely
    does."""
    layout = resolve_layout(model)
    unit = raw / raw.norm()
    projections = states @ unit
    spread = float(projections.max() - projections.min())
    p_minus = float(projections.min()) - 0.25 * spread
    p_plus = float(projections.max()) + 0.25 * spread
    t = (projections - p_minus) / (p_plus - p_minus)
    scaler = TrustRegionScaler(form=form, tau=float(t.median()), recenter=recenter, beta=8.0, rho=3.0)
    scaler.regions[LAYER] = LayerRegion(unit, p_plus, p_minus, float(raw.norm()),
                                        torch.zeros(3, layout.hidden_size) if offsets is None else offsets)
    step = SteeringStep({LAYER: raw}, AddDirection(normalize=True), scaler, "decision", "mars")
    return Plan([step], model_info(model, layout, processor))


def _plans(model, tok, batches) -> dict[str, Plan]:
    layout = resolve_layout(model)
    info = model_info(model, layout)
    raw = _direction(layout.hidden_size)
    recorded = ActivationRecorder(model, layout, [0, LAYER], DecisionPosition()).record(batches)
    states = recorded.prompts(LAYER)
    unit = raw / raw.norm()
    # steers the rows above the median projection at layer 0
    conditional = ConditionalScaler(
        alpha=4.0, condition_layer=0, threshold=float((recorded.prompts(0) @ unit).median())
    )
    conditional._unit = unit
    return {
        "add": Plan(
            [SteeringStep({LAYER: raw}, AddDirection(), ConstantScaler(2.0), "decision", "add")], info
        ),
        "clamp": Plan(
            [SteeringStep({2: raw}, Clamp(target=5.0), ConstantScaler(1.0), "decision", "induce")], info
        ),
        "writers": Plan(
            [SteeringStep({LAYER: raw}, AddDirection(), ConstantScaler(1.5), "decision", "w", "writers")],
            info,
        ),
        "conditional": Plan(
            [SteeringStep({LAYER: raw}, AddDirection(), conditional, "decision", "cast")], info
        ),
        "mars": _mars_plan(model, tok, states, raw),
    }


def _reference(model, batches, plan=None) -> torch.Tensor:
    if plan is None:
        return torch.cat([decision_logits(model, b) for b in batches])
    with plan.apply(model):
        return torch.cat([decision_logits(model, b) for b in batches])


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_matches_full_forward_per_plan(family):
    model, tok = tiny_text_model(family)
    batches = [encode_prompts(tok, PROMPTS_A), encode_prompts(tok, PROMPTS_B)]  # two widths, left padding
    assert batches[0]["attention_mask"].shape[1] != batches[1]["attention_mask"].shape[1]
    plans = _plans(model, tok, batches)
    prefix = DecisionPrefix(model, batches)
    unsteered = _reference(model, batches)
    assert (prefix.logits() - unsteered).abs().max() <= TOL
    for name, plan in plans.items():
        expected = _reference(model, batches, plan)
        assert (expected - unsteered).abs().max() > 1e-2, name  # the plan really steers
        assert (prefix.logits(plan) - expected).abs().max() <= TOL, name
    # the MARS plan opens some gates and leaves others closed: closed rows are the unsteered ones
    moved = (_reference(model, batches, plans["mars"]) - unsteered).abs().amax(-1) > 0
    assert 0 < int(moved.sum()) < len(moved)
    # forks never touch the prefix: the unsteered logits are unchanged after every plan ran
    assert torch.equal(prefix.logits(), prefix.logits())
    assert (prefix.logits() - unsteered).abs().max() <= TOL


@pytest.mark.parametrize("family", ["llama", "gemma2"])
@pytest.mark.parametrize("max_rows", [5, 1024], ids=["several-steps", "one-step"])
def test_stacked_plans_give_each_plans_own_logits(family, max_rows):
    model, tok = tiny_text_model(family)
    batches = [encode_prompts(tok, PROMPTS_A), encode_prompts(tok, PROMPTS_B)]
    plans = [None, *_plans(model, tok, batches).values(), None]
    prefix = DecisionPrefix(model, batches)
    stacked = prefix.logits_of_plans(plans, max_rows=max_rows)
    assert len(stacked) == len(plans)
    for plan, logits in zip(plans, stacked, strict=True):
        assert (logits - _reference(model, batches, plan)).abs().max() <= TOL
    assert (stacked[1] - stacked[0]).abs().max() > 1e-2  # the blocks really differ: each plan steered its own


def test_one_batch_and_many_plans_helper():
    model, tok = tiny_text_model("llama")
    batch = encode_prompts(tok, PROMPTS_A)
    plans = _plans(model, tok, [batch])
    results = decision_logits_per_plan(model, [batch], [None, plans["add"], plans["mars"]])
    for plan, logits in zip([None, plans["add"], plans["mars"]], results):
        assert (logits - _reference(model, [batch], plan)).abs().max() <= TOL


def test_recorded_states_are_the_decision_states():
    model, tok = tiny_text_model("qwen2")
    batches = [encode_prompts(tok, PROMPTS_A), encode_prompts(tok, PROMPTS_B)]
    layout = resolve_layout(model)
    recorded = ActivationRecorder(model, layout, [0, LAYER], DecisionPosition()).record(batches)
    output = DecisionPrefix(model, batches).run(None, record_layers=[0, LAYER])
    for layer in (0, LAYER):
        assert (output.states[layer] - recorded.prompts(layer)).abs().max() <= TOL


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_vlm_image_rows_with_recentering(family):
    from steerpeft.inputs.batches import build_batch, media_for

    model, processor = tiny_vlm(family)
    layout = resolve_layout(model)
    prompts = ["Describe this.", "What colour is shown here, and why might it matter?", "Hi"]
    images = build_batch(processor, prompts, "image", media_for("image", len(prompts), processor))
    processor.tokenizer.padding_side = "left"
    conversations = [
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": tiny_image()}, {"type": "text", "text": "hi"}],
            }
        ],
        [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
    ]
    mixed = dict(
        processor.apply_chat_template(
            conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs={"padding": True},
        )
    )
    batches = [images, mixed]
    raw = _direction(layout.hidden_size, seed=2)
    offsets = torch.randn(3, layout.hidden_size, generator=torch.Generator().manual_seed(3)) * 3
    offsets[0] = 0
    states = ActivationRecorder(model, layout, [LAYER], DecisionPosition()).record(batches).prompts(LAYER)
    plan = _mars_plan(model, processor, states, raw, offsets)
    flat = _mars_plan(model, processor, states, raw, offsets, recenter="none")
    prefix = DecisionPrefix(model, batches)
    expected = _reference(model, batches, plan)
    assert (prefix.logits(plan) - expected).abs().max() <= TOL
    # re-centering matters on these rows
    assert (_reference(model, batches, flat) - expected).abs().max() > 1e-3
    assert (prefix.logits() - _reference(model, batches)).abs().max() <= TOL


def test_refusals():
    model, tok = tiny_text_model("llama")
    layout = resolve_layout(model)
    batch = encode_prompts(tok, PROMPTS_A)
    raw = _direction(layout.hidden_size)
    everywhere = Plan([SteeringStep({LAYER: raw}, AddDirection(), ConstantScaler(1.0), "all", "actadd")],
                      model_info(model, layout))
    prefix = DecisionPrefix(model, batch)
    with pytest.raises(ConfigError, match="decision"):
        prefix.logits(everywhere)
    with pytest.raises(DataError, match="left-padded"):
        DecisionPrefix(model, encode_prompts(tok, PROMPTS_A, padding_side="right"))
    with everywhere.apply(model):
        with pytest.raises(ConfigError, match="outside any steering"):
            DecisionPrefix(model, batch)
        with pytest.raises(ConfigError, match="inside a steering block"):
            prefix.logits()


def test_fork_keeps_rows_and_leaves_the_cache_alone():
    model, tok = tiny_text_model("llama")
    batch = encode_prompts(tok, PROMPTS_A)
    with torch.no_grad():
        cache = model(**batch, use_cache=True).past_key_values
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    fork = fork_cache(cache, torch.tensor([2, 0]))
    with torch.no_grad():
        model(
            input_ids=batch["input_ids"][[2, 0], -1:],
            attention_mask=torch.ones(2, batch["input_ids"].shape[1] + 1, dtype=torch.long),
            past_key_values=fork, use_cache=True,
        )
    assert fork.get_seq_length() == cache.get_seq_length() + 1
    for layer, (keys, values) in zip(cache.layers, before):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
    assert torch.equal(fork.layers[0].keys[:, :, :-1], before[0][0][[2, 0]])


def test_models_with_rope_state_are_refused():
    model, processor = tiny_vlm("qwen2_vl")
    batch = dict(
        processor.apply_chat_template(
            [[{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]],
            add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        )
    )
    with pytest.raises(ConfigError, match="rope"):
        DecisionPrefix(model, batch)


def test_prompts_longer_than_the_sliding_window():
    """Gemma2's local layers keep window - 1 columns: stacking a long batch with a short one must still
    match."""
    model, tok = tiny_text_model("gemma2")  # sliding_window 64
    batches = [encode_prompts(tok, [" ".join(["word"] * 80), "short"]), encode_prompts(tok, PROMPTS_B)]
    assert batches[0]["attention_mask"].shape[1] > 64
    plans = _plans(model, tok, batches)
    prefix = DecisionPrefix(model, batches)
    assert (prefix.logits() - _reference(model, batches)).abs().max() <= TOL
    for name in ("add", "mars"):
        assert (prefix.logits(plans[name]) - _reference(model, batches, plans[name])).abs().max() <= TOL, name
