"""MARS mechanics on tiny VLMs: gate math, modality per row, first-token exactness, benign rows untouched."""

from __future__ import annotations

import pytest
import torch
from plans import TINY_FALLBACK
from tiny_models import VLM_FAMILIES, supports_video, tiny_image, tiny_vlm

from steerpeft import Plan, load_recipe
from steerpeft.architectures import decoder_layers, resolve_layout
from steerpeft.inputs.batches import available_modalities, build_batch, media_for
from steerpeft.interventions import AddDirection
from steerpeft.mars.calibration import MODALITY_INDEX
from steerpeft.plan import SteeringStep
from steerpeft.provenance import model_info
from steerpeft.scalers.trust_region import LayerRegion, TrustRegionScaler
from steerpeft.session import acquire_session, active_session, release_session

PROMPTS = ["Describe this.", "What colour is shown here, and why might it matter?", "Hi"]
LAYER = 1


def _hand_plan(model, tau: float, form: str = "traversal", recenter: str = "measure", seed: int = 3,
               spans: list[float] | None = None) -> Plan:
    layout = resolve_layout(model)
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(layout.hidden_size, generator=generator)
    unit = raw / raw.norm()
    offsets = torch.randn(3, layout.hidden_size, generator=generator) * 0.5
    offsets[0] = 0
    region = LayerRegion(unit, p_plus=1.0, p_minus=-1.0, raw_norm=float(raw.norm()), offsets=offsets,
                         spans=None if spans is None else torch.tensor(spans))
    scaler = TrustRegionScaler(form=form, tau=tau, recenter=recenter)
    scaler.regions[LAYER] = region
    step = SteeringStep({LAYER: raw}, AddDirection(normalize=True), scaler, "decision", "mars")
    return Plan([step], model_info(model, layout))


def _layer_output(model, batch, plan=None) -> torch.Tensor:
    captured = {}
    layers = decoder_layers(model, resolve_layout(model))

    def grab(module, args, output):
        captured["h"] = (output[0] if isinstance(output, tuple) else output).clone()

    with torch.no_grad():
        if plan is None:
            handle = layers[LAYER].register_forward_hook(grab)
            model(**batch)
        else:
            with plan.apply(model):
                handle = layers[LAYER].register_forward_hook(grab)  # runs after steerpeft's hook
                model(**batch)
        handle.remove()
    return captured["h"]


def _reference(h: torch.Tensor, attention_mask: torch.Tensor, region: LayerRegion, tau: float, form: str,
               modality: int, recenter: str) -> torch.Tensor:
    """MARS.md step 4 written out for each row's last real token."""
    out = h.clone()
    for row in range(h.shape[0]):
        pos = int(attention_mask[row].nonzero().max())
        state = h[row, pos]
        tilde = state - region.offsets[modality] if recenter != "none" else state
        proj = float(tilde @ region.unit)
        text_span = region.p_plus - region.p_minus
        span = text_span if region.spans is None or recenter == "none" else float(region.spans[modality])
        t = (proj - region.p_minus) / span
        if form == "traversal":
            gate = min(max((t - tau) / (1 - tau), 0.0), 1.0)
            update = gate * max(region.p_minus + span - proj, 0.0) * region.unit
        else:
            update = min(2.0 * max(t - tau, 0.0), 1.5) * region.raw_norm * (span / text_span) * region.unit
        base = state - region.offsets[modality] if recenter == "shift" and t > tau else state
        out[row, pos] = base + update
    return out


@pytest.mark.parametrize("spans", [None, [2.0, 0.5, 0.7]], ids=["text-span", "modality-spans"])
@pytest.mark.parametrize("form", ["traversal", "beta"])
@pytest.mark.parametrize("recenter", ["measure", "shift", "none"])
@pytest.mark.parametrize("modality", ["text", "image"])
def test_gate_math_matches_reference(form, recenter, modality, spans):
    model, processor = tiny_vlm("qwen2_vl")
    media = media_for(modality, len(PROMPTS), processor)
    batch = build_batch(processor, PROMPTS, modality, media)
    plain = _layer_output(model, batch)
    plan = _hand_plan(model, tau=0.0, form=form, recenter=recenter, spans=spans)
    region = plan.steps[0].scaler.regions[LAYER]
    # put the rows across the gate: shift the projections so some open and some stay closed
    steered = _layer_output(model, batch, plan)
    expected = _reference(
        plain, batch["attention_mask"], region, 0.0, form, MODALITY_INDEX[modality], recenter
    )
    assert (steered - expected).abs().max() < 1e-4


@pytest.mark.parametrize("family", [f for f in VLM_FAMILIES if supports_video(f)][:1] + ["llava", "smolvlm"])
def test_modality_detected_per_row(family):
    model, processor = tiny_vlm(family)
    layout = resolve_layout(model)
    frame = model_info(model, layout, processor).get("video_frame_token_id")  # SmolVLM2: frames are images
    assert (frame is not None) == (family == "smolvlm")
    session = acquire_session(model, layout.image_token_id, layout.video_token_id, frame)
    try:
        for modality in available_modalities(model, processor):
            batch = build_batch(processor, PROMPTS, modality, media_for(modality, len(PROMPTS), processor))
            with torch.no_grad():
                model(**batch)
            assert session.context.modality.tolist() == [MODALITY_INDEX[modality]] * len(PROMPTS)
        # a mixed batch: one image conversation and one text conversation
        tok = processor.tokenizer
        tok.padding_side = "left"
        conversations = [
            [
                {
                    "role": "user",
                    "content": [{"type": "image", "image": tiny_image()}, {"type": "text", "text": "hi"}],
                }
            ],
            [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        ]
        mixed = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                              return_dict=True, return_tensors="pt", padding=True)
        with torch.no_grad():
            model(**mixed)
        assert session.context.modality.tolist() == [1, 0]
    finally:
        release_session(model)


@pytest.mark.parametrize("recenter", ["measure", "shift", "none"])
def test_closed_gate_rows_are_bit_identical(recenter):
    """MARS's promise for benign inputs, in each recenter mode: a closed gate changes nothing at all."""
    model, processor = tiny_vlm("qwen2_vl")
    batch = build_batch(processor, PROMPTS, "image", media_for("image", len(PROMPTS), processor))
    with torch.no_grad():
        plain = model(**batch).logits
    plan = _hand_plan(model, tau=0.0, recenter=recenter)
    scaler = plan.steps[0].scaler
    plain_h = _layer_output(model, batch)
    region = scaler.regions[LAYER]
    last = plain_h[:, -1] - (region.offsets[1] if recenter != "none" else 0)
    t = ((last @ region.unit) - region.p_minus) / (region.p_plus - region.p_minus)
    scaler.tau = float(t.median())  # half the rows open, half stay closed
    with torch.no_grad(), plan.apply(model):
        steered = model(**batch).logits
    closed = t <= scaler.tau
    assert closed.any() and (~closed).any()
    for row in range(len(PROMPTS)):
        if closed[row]:
            assert torch.equal(steered[row], plain[row])
        else:
            assert not torch.equal(steered[row], plain[row])


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision", "idefics3"])
def test_first_token_steering_same_with_and_without_cache(family):
    model, processor = tiny_vlm(family)
    batch = build_batch(processor, PROMPTS[:2], "image", media_for("image", 2, processor))
    plan = _hand_plan(model, tau=-5.0)  # gate open for every row
    with torch.no_grad():
        plain = model.generate(
            **batch, max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
        with plan.apply(model):
            runs = [
                model.generate(
                    **batch, max_new_tokens=3, do_sample=False, use_cache=cache, output_scores=True,
                    return_dict_in_generate=True,
                )
                for cache in (True, False)
            ]
    cached, uncached = (torch.stack(r.scores) for r in runs)
    assert (cached - uncached).abs().max() < 1e-4
    assert (cached[0] - torch.stack(plain.scores)[0]).abs().max() > 1e-4


def test_batched_equals_unbatched_with_images():
    model, processor = tiny_vlm("qwen2_vl")
    media = media_for("image", len(PROMPTS), processor)
    plan = _hand_plan(model, tau=-5.0)
    batch = build_batch(processor, PROMPTS, "image", media)
    with torch.no_grad(), plan.apply(model):
        batched = model(**batch).logits[:, -1]
        for row in range(len(PROMPTS)):
            alone = model(**build_batch(processor, [PROMPTS[row]], "image", [media[row]])).logits[0, -1]
            assert (batched[row] - alone).abs().max() < 1e-4


@pytest.mark.parametrize(
    ("family", "segment"),
    [
        ("qwen2_vl", "text"), ("llava_onevision", "text"), ("gemma3", "text"), ("smolvlm", "modality"),
        ("qwen2_vl", "modality"),
    ],
)
def test_mars_recipe_fits_on_tiny_vlm(family, segment, tmp_path):
    model, processor = tiny_vlm(family)
    recipe = load_recipe(
        "mars", ["data.limit=12", "fit.batch_size=6", f"media.segment={segment}", TINY_FALLBACK]
    )
    plan = recipe.fit(model, processor)
    step = plan.steps[0]
    layer = step.layers[0]
    table = plan.metadata["steps"]["mars"]["layer_scores"]
    assert {"separation", "induce", "kl", "false_trigger", "tau", "chosen"} <= set(table[0])
    assert sum(row["chosen"] for row in table) == 1
    region = step.scaler.regions[layer]
    assert float(region.offsets[1].norm()) > 0  # image offset measured
    if supports_video(family):
        assert float(region.offsets[2].norm()) > 0
    text_span = region.p_plus - region.p_minus
    if segment == "modality":  # the harmful end measured with neutral media: each media span its own
        assert region.spans is not None and float(region.spans[0]) == pytest.approx(text_span)
        assert all(
            float(region.spans[m]) != pytest.approx(text_span) for m in (1, 2) if region.offsets[m].norm() > 0
        )
        assert (region.spans >= 0.1 * text_span - 1e-6).all()
    else:
        assert region.spans is None
    batch = build_batch(processor, PROMPTS, "image", media_for("image", len(PROMPTS), processor))
    plan.save(tmp_path / "plan")
    loaded = Plan.load(tmp_path / "plan")
    loaded_spans = loaded.steps[0].scaler.regions[layer].spans
    assert (loaded_spans is None) == (region.spans is None)
    assert loaded_spans is None or torch.equal(loaded_spans, region.spans)
    with torch.no_grad():
        with plan.apply(model):
            a = model(**batch).logits
        with loaded.apply(model):
            b = model(**batch).logits
    assert (a - b).abs().max() < 1e-5


def test_a_fitted_plan_carries_the_frame_marker_to_inference():
    """SmolVLM2 plans record the frame marker at fit time, so applied plans see video rows."""
    model, processor = tiny_vlm("smolvlm")
    plan = _hand_plan(model, tau=0.0)
    plan.model_info = model_info(model, resolve_layout(model), processor)
    batch = build_batch(processor, PROMPTS, "video", media_for("video", len(PROMPTS), processor))
    with torch.no_grad(), plan.apply(model):
        model(**batch)
        assert active_session(model).context.modality.tolist() == [2] * len(PROMPTS)


def test_unknown_segment_is_refused_with_a_suggestion():
    from steerpeft.errors import ConfigError

    with pytest.raises(ConfigError, match="Did you mean 'modality'"):
        load_recipe("mars", ["data.limit=12", "media.segment=modalty"])
