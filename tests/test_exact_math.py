"""Steered forward passes equal a plain-PyTorch reference of the same math."""

from __future__ import annotations

import pytest
import torch
from plans import make_plan, random_direction
from tiny_models import TEXT_FAMILIES, VLM_FAMILIES, tiny_text_model, tiny_vlm

from steerpeft.architectures import decoder_layers, get_module, resolve_layout
from steerpeft.plan import EMBEDDING

TOL = 1e-4


def _ids(tokenizer, n: int = 7, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(10, 1000, (2, n), generator=generator)


def _reference_logits(model, input_ids, layer_fns: dict[int, callable]) -> torch.Tensor:
    """Logits with plain forward hooks applying `fn(hidden)` at each layer (EMBEDDING for the embedding)."""
    layout = resolve_layout(model)
    layers = decoder_layers(model, layout)
    handles = []
    for layer, fn in layer_fns.items():
        module = get_module(model, layout.embedding_path) if layer == EMBEDDING else layers[layer]

        def hook(mod, args, output, fn=fn):
            if isinstance(output, tuple):
                return (fn(output[0]), *output[1:])
            return fn(output)

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model(input_ids=input_ids).logits
    finally:
        for handle in handles:
            handle.remove()


def _steered_logits(model, plan, input_ids) -> torch.Tensor:
    with torch.no_grad(), plan.apply(model):
        return model(input_ids=input_ids).logits


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_add_matches_reference(family):
    model, tok = tiny_text_model(family)
    layout = resolve_layout(model)
    plan = make_plan(model, "add", layers=(1,), alpha=2.0)
    v = random_direction(layout.hidden_size)
    ids = _ids(tok)
    reference = _reference_logits(model, ids, {1: lambda h: h + 2.0 * v})
    steered = _steered_logits(model, plan, ids)
    plain = _reference_logits(model, ids, {})
    assert (steered - plain).abs().max() > 1e-3, "steering must change the logits"
    assert (steered - reference).abs().max() < TOL


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_ablation_everywhere_matches_reference(family):
    model, tok = tiny_text_model(family)
    layout = resolve_layout(model)
    layers = (EMBEDDING, *range(layout.num_layers))
    plan = make_plan(model, "ablate", layers=layers, alpha=1.0)
    v = random_direction(layout.hidden_size)
    u = v / v.norm()
    ablate = lambda h: h - (h @ u).unsqueeze(-1) * u
    ids = _ids(tok)
    reference = _reference_logits(model, ids, {layer: ablate for layer in layers})
    steered = _steered_logits(model, plan, ids)
    assert (steered - reference).abs().max() < TOL


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_clamp_matches_reference(family):
    model, tok = tiny_text_model(family)
    layout = resolve_layout(model)
    plan = make_plan(model, "clamp", layers=(2,), alpha=1.0)
    v = random_direction(layout.hidden_size)
    u = v / v.norm()
    ids = _ids(tok)
    reference = _reference_logits(model, ids, {2: lambda h: h + (3.0 - (h @ u)).unsqueeze(-1) * u})
    assert (_steered_logits(model, plan, ids) - reference).abs().max() < TOL


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_vlm_text_backbone_add_matches_reference(family):
    model, processor = tiny_vlm(family)
    layout = resolve_layout(model)
    plan = make_plan(model, "add", layers=(1,), alpha=1.5)
    v = random_direction(layout.hidden_size)
    tok = getattr(processor, "tokenizer", processor)
    batch = tok(["Hello there, how are you?"], return_tensors="pt")
    ids = batch["input_ids"]
    reference = _reference_logits(model, ids, {1: lambda h: h + 1.5 * v})
    assert (_steered_logits(model, plan, ids) - reference).abs().max() < TOL


def test_decision_position_only_touches_last_token():
    model, tok = tiny_text_model("llama")
    layout = resolve_layout(model)
    plan = make_plan(model, "add", layers=(1,), positions="decision", alpha=3.0)
    v = random_direction(layout.hidden_size)

    def last_only(h):
        h = h.clone()
        h[:, -1] += 3.0 * v
        return h

    ids = _ids(tok)
    reference = _reference_logits(model, ids, {1: last_only})
    assert (_steered_logits(model, plan, ids) - reference).abs().max() < TOL


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_writer_site_ablation_matches_reference(family):
    """Ablation at every residual writer (and the embedding) keeps u out of the stream everywhere."""
    from steerpeft.interventions import Ablate
    from steerpeft.plan import Plan, SteeringStep, residual_output_paths
    from steerpeft.provenance import model_info
    from steerpeft.scalers import ConstantScaler

    model, tok = tiny_text_model(family)
    layout = resolve_layout(model)
    v = random_direction(layout.hidden_size)
    u = v / v.norm()
    targets = [EMBEDDING, *range(layout.num_layers)]
    plan = Plan(
        [
            SteeringStep(
                {layer: v for layer in targets}, Ablate(), ConstantScaler(1.0), "all", "abl", "writers"
            )
        ],
        model_info(model, layout),
    )
    ablate = lambda h: h - (h @ u).unsqueeze(-1) * u
    handles = [get_module(model, layout.embedding_path).register_forward_hook(lambda m, a, o: ablate(o))]
    for layer in range(layout.num_layers):
        for path in residual_output_paths(layout, layer):
            handles.append(get_module(model, path).register_forward_hook(lambda m, a, o: ablate(o)))
    ids = _ids(tok)
    residual = {}
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        for handle in handles:
            handle.remove()
        with plan.apply(model):
            steered = model(input_ids=ids, output_hidden_states=True)
    assert (steered.logits - reference).abs().max() < TOL
    if not layout.post_norm:
        # every residual state (layer outputs) carries no u-component
        for hidden in steered.hidden_states[:-1]:
            assert (hidden @ u).abs().max() < 1e-4
    del residual
