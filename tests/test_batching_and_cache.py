"""Positions are exact per row under padding, and identical with and without KV cache."""

from __future__ import annotations

import pytest
import torch
from plans import make_plan
from tiny_models import tiny_text_model

from steerpeft.inputs.text import encode_prompts

POSITIONS = ["all", "prompt", "decision", "generated", "first_generated:2"]
PROMPTS = ["Hi", "Tell me a long story about a brave little robot", "What is two plus two?"]


@pytest.fixture(scope="module")
def llama():
    return tiny_text_model("llama")


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("kind", ["add", "ablate"])
def test_batched_equals_one_by_one(llama, positions, side, kind):
    model, tok = llama
    plan = make_plan(model, kind, layers=(1, 2), positions=positions, alpha=4.0)
    batch = encode_prompts(tok, PROMPTS, padding_side=side)
    with torch.no_grad(), plan.apply(model):
        batched = model(**batch).logits
        for row, prompt in enumerate(PROMPTS):
            single = encode_prompts(tok, [prompt])
            alone = model(**single).logits[0]
            real = batch["attention_mask"][row].bool()
            assert real.sum() == alone.shape[0]
            assert (batched[row][real] - alone).abs().max() < 1e-4


def _scores(model, batch, use_cache: bool) -> torch.Tensor:
    out = model.generate(**batch, max_new_tokens=4, do_sample=False, use_cache=use_cache,
                         output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    return torch.stack(out.scores)


@pytest.mark.parametrize("positions", POSITIONS)
def test_generate_with_cache_equals_without(llama, positions):
    model, tok = llama
    plan = make_plan(model, "add", layers=(1,), positions=positions, alpha=6.0)
    batch = encode_prompts(tok, PROMPTS[:2], padding_side="left")
    with torch.no_grad():
        plain = _scores(model, batch, True)
        with plan.apply(model):
            cached = _scores(model, batch, True)
            uncached = _scores(model, batch, False)
    assert (cached - uncached).abs().max() < 1e-4
    changed = (cached - plain).abs().amax(dim=(1, 2))
    if positions in ("all", "prompt", "decision"):
        assert changed[0] > 1e-3, "prefill-position steering must change the first token's scores"
    if positions in ("generated", "first_generated:2"):
        assert changed[0] < 1e-6, "generated-token steering cannot touch the first token's scores"
        assert changed[1] > 1e-3, "the second step sees the first generated token steered"


def test_manual_decode_loop_with_cache_equals_generate(llama):
    """A hand-written cached decode loop steers the same absolute positions as generate()."""
    model, tok = llama
    plan = make_plan(model, "add", layers=(1,), positions="first_generated:1", alpha=6.0)
    batch = encode_prompts(tok, PROMPTS[:2])
    with torch.no_grad(), plan.apply(model):
        scores = _scores(model, batch, False)
        out = model(**batch, use_cache=True)
        next_ids = out.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(next_ids)], dim=1)
        step = model(
            input_ids=next_ids, attention_mask=mask, past_key_values=out.past_key_values, use_cache=True
        )
    assert (out.logits[:, -1] - scores[0]).abs().max() < 1e-4
    assert (step.logits[:, -1] - scores[1]).abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["add", "ablate", "clamp"])
@pytest.mark.parametrize("positions", ["all", "generated", "first_generated:2"])
def test_decoding_fast_path_is_taken_and_matches_the_masked_path(llama, kind, positions, monkeypatch):
    """Cached `generate` steps skip the position mask (scalar strength); the result must not change."""

    model, tok = llama
    plan = make_plan(model, kind, layers=(0, 2), positions=positions, alpha=3.0)
    batch = encode_prompts(tok, PROMPTS, padding_side="left")
    seen: list[bool] = []
    original = plan.steps[0].positions.covers_chunk
    monkeypatch.setattr(type(plan.steps[0].positions), "covers_chunk",
                        lambda self, fc: seen.append(original(fc)) or seen[-1])
    with torch.no_grad(), plan.apply(model):
        fast = _scores(model, batch, True)
    assert any(seen) and not seen[0], "prefill uses the mask, cached decoding steps the fast path"
    monkeypatch.setattr(type(plan.steps[0].positions), "covers_chunk", lambda self, fc: False)
    with torch.no_grad(), plan.apply(model):
        masked = _scores(model, batch, True)
    assert (fast - masked).abs().max() < 1e-5


def test_cacheless_manual_loop_inside_generation_equals_generate(llama):
    """`generation(model)` makes a loop that re-feeds the whole sequence continue the prompt."""
    from steerpeft.session import generation

    model, tok = llama
    plan = make_plan(model, "add", layers=(1,), positions="first_generated:1", alpha=6.0)
    batch = encode_prompts(tok, PROMPTS[:2], padding_side="left")
    with torch.no_grad(), plan.apply(model):
        scores = _scores(model, batch, False)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with generation(model):
            first = model(input_ids=ids, attention_mask=mask).logits[:, -1]
            next_ids = first.argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, next_ids], 1), torch.cat([mask, torch.ones_like(next_ids)], 1)
            second = model(input_ids=ids, attention_mask=mask).logits[:, -1]
        outside = model(input_ids=ids, attention_mask=mask).logits[:, -1]
    assert (first - scores[0]).abs().max() < 1e-4
    assert (second - scores[1]).abs().max() < 1e-4
    assert (outside - scores[1]).abs().max() > 1e-3, "outside a generation the long input is a new prompt"


def test_ablation_projector_form_equals_rank_one_form(llama, monkeypatch):
    """Decoding steps on a GPU ablate with one GEMM (I - u u^T); forced here on the CPU."""
    from steerpeft.interventions import ablate

    model, tok = llama
    plan = make_plan(model, "ablate", layers=(0, 1, 2, 3), positions="all", alpha=1.0)
    batch = encode_prompts(tok, PROMPTS, padding_side="left")
    with torch.no_grad():
        with plan.apply(model):
            rank_one = _scores(model, batch, True)
        monkeypatch.setattr(ablate, "uses_projector", lambda hidden: hidden.shape[1] == 1)
        with plan.apply(model):
            projected = _scores(model, batch, True)
            assert len(plan.steps[0].intervention._projectors) == 1, "one projector shared by every layer"
        assert not plan.steps[0].intervention._projectors, "removing the plan frees the projector"
    assert (projected - rank_one).abs().max() < 1e-4
    assert (projected - rank_one).abs().max() > 0, "the projector path ran"
