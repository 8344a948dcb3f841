"""Mechanics on the real SmolLM2-135M-Instruct: separation, ablation, addition.

SmolLM2 barely refuses, so these tests assert mechanics (projections,
separation, shifts), never refusal behaviour.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SHARED_DATA

from steerpeft import Steerer
from steerpeft.architectures import decoder_layers, resolve_layout
from steerpeft.data import builtin_prompts
from steerpeft.extractors import DiffMeans
from steerpeft.inputs.text import encode_prompts
from steerpeft.interventions import Ablate, AddDirection
from steerpeft.models import load_model
from steerpeft.plan import EMBEDDING, Plan, SteeringStep
from steerpeft.provenance import model_info
from steerpeft.scalers import ConstantScaler
from steerpeft.selectors import SweepSelector

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_model()


@pytest.fixture(scope="module")
def fitted(smollm2):
    model, tok = smollm2
    steerer = Steerer(DiffMeans(), SweepSelector(candidates="all"), batch_size=32)
    plan = steerer.fit(model, tok, builtin_prompts("harmful"), builtin_prompts("harmless"))
    return plan, steerer.last_fit


def _states(model, tok, prompts, layers) -> dict[int, torch.Tensor]:
    """Last-token residual states at `layers` (index -1 = embedding output) for each prompt."""
    layout = resolve_layout(model)
    modules = decoder_layers(model, layout)
    captured: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    handles = []
    for layer in layers:
        module = model.get_submodule(layout.embedding_path) if layer == EMBEDDING else modules[layer]
        handles.append(
            module.register_forward_hook(
                lambda m, a, o, layer=layer: captured[layer].append(
                    (o[0] if isinstance(o, tuple) else o)[:, -1].clone()
                )
            )
        )
    with torch.no_grad():
        model(**encode_prompts(tok, prompts))
    for handle in handles:
        handle.remove()
    return {layer: torch.cat(rows) for layer, rows in captured.items()}


def test_directions_separate_held_out_prompts(fitted, capsys):
    plan, _ = fitted
    table = plan.metadata["steps"]["step"]["layer_scores"]
    by_layer = {row["layer"]: row for row in table}
    with capsys.disabled():
        print("\nSmolLM2 held-out separation per layer (built-in matched prompts):")
        print(
            " ".join(
                f"L{layer}:{row['accuracy']:.2f}/{row['separation']:.2f}" for layer, row in by_layer.items()
            )
        )
    best = max(row["accuracy"] for row in table)
    assert best >= 0.75, "the refusal direction must separate held-out harmful from harmless prompts"
    assert max(row["separation"] for row in table) >= 0.85
    # early layers carry much less of the distinction than the middle ones
    assert by_layer[1]["separation"] < max(row["separation"] for row in table) - 0.1


@pytest.mark.skipif(not (SHARED_DATA / "harmbench").exists(), reason="../shared/data not present")
def test_harmbench_vs_benign_anchor_separation(smollm2, capsys):
    model, tok = smollm2
    harmful = (SHARED_DATA / "harmbench" / "harmbench_standard.txt").read_text().splitlines()[:80]
    anchors = json.loads((SHARED_DATA / "benign-anchors" / "benign_anchors_v1.json").read_text())
    harmless = [
        item if isinstance(item, str) else item.get("prompt") or item.get("text") or item.get("instruction")
        for item in anchors.get("benign", anchors.get("prompts", []))
    ]
    harmless = [h for h in harmless if h]
    if len(harmless) < 20:
        pytest.skip("benign anchor file has an unexpected layout")
    steerer = Steerer(DiffMeans(), SweepSelector(candidates=[10, 14, 16, 17, 20]), batch_size=32)
    plan = steerer.fit(model, tok, harmful, harmless)
    table = plan.metadata["steps"]["step"]["layer_scores"]
    with capsys.disabled():
        print(
            "\nHarmBench vs benign anchors accuracy:",
            {row["layer"]: round(row["accuracy"], 3) for row in table},
        )
    assert max(row["accuracy"] for row in table) >= 0.95


def test_ablation_removes_the_direction_at_every_layer(smollm2, fitted):
    model, tok = smollm2
    plan, data = fitted
    layout = resolve_layout(model)
    chosen = plan.steps[0].layers[0]
    direction = data.directions.vectors[chosen]
    unit = direction / direction.norm()
    targets = [EMBEDDING, *range(layout.num_layers)]
    ablation = Plan(
        [
            SteeringStep(
                {layer: direction for layer in targets}, Ablate(), ConstantScaler(1.0), "all", "ablate"
            )
        ],
        model_info(model, layout),
    )
    prompts = list(builtin_prompts("harmful").prompts[:8])
    before = _states(model, tok, prompts, targets)
    with ablation.apply(model):
        after = _states(model, tok, prompts, targets)
    for layer in targets:
        assert (after[layer] @ unit).abs().max() < 1e-3 * after[layer].norm(dim=-1).max()
    assert max(float((before[layer] @ unit).abs().max()) for layer in targets) > 0.5


def test_addition_moves_the_projection_by_the_expected_amount(smollm2, fitted):
    model, tok = smollm2
    plan, data = fitted
    layout = resolve_layout(model)
    layer = plan.steps[0].layers[0]
    direction = data.directions.vectors[layer]
    unit = direction / direction.norm()
    alpha = 2.5
    add = Plan(
        [SteeringStep({layer: direction}, AddDirection(), ConstantScaler(alpha), "all", "add")],
        model_info(model, layout),
    )
    prompts = list(builtin_prompts("harmless").prompts[:8])
    before = _states(model, tok, prompts, [layer])[layer] @ unit
    with add.apply(model):
        after = _states(model, tok, prompts, [layer])[layer] @ unit
    expected = alpha * float(direction.norm())
    assert torch.allclose(after - before, torch.full_like(before, expected), atol=1e-3 * expected)
