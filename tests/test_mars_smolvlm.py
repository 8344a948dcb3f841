"""MARS re-centering and gating on the SmolVLM-shaped model with the real SmolLM2 text weights.

The vision side is random, but the language backbone receives a genuine, large offset from
image tokens: exactly what re-centering must remove.  Mechanics only (SmolLM2 does not refuse).
"""

from __future__ import annotations

import pytest

from steerkit import load_recipe
from steerkit.mars.evaluation import eval_sets, gate_values, mars_step
from steerkit.models import build_smolvlm_shaped

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fitted():
    model, processor = build_smolvlm_shaped()
    recipe = load_recipe("mars", ["data.limit=60", "steps.0.selector.candidates.start=15", "steps.0.selector.candidates.stop=19"])
    plan = recipe.fit(model, processor)
    split = recipe.split_prompts()
    return model, processor, plan, split["positive_validation"], split["negative_validation"]


def test_recentering_keeps_benign_images_closed_and_harmful_images_open(fitted, capsys):
    model, processor, plan, harmful_val, harmless_val = fitted
    step = mars_step(plan)
    tau = step.scaler.tau
    region = step.scaler.regions[step.layers[0]]
    assert float(region.offsets[1].norm()) > 0.1 * float(region.unit.norm())  # a real image offset was measured
    sets = eval_sets(model, processor, harmful_val, harmless_val, modalities=["text", "image"])
    t = {name: gate_values(plan, model, batches, name.split("/")[1]) for name, batches in sets.items()}
    raw = {name: gate_values(plan, model, batches, name.split("/")[1], recenter=False)
           for name, batches in sets.items() if name.endswith("image")}
    closed = float((t["harmless/image"] <= tau).double().mean())
    with capsys.disabled():
        print(f"\nSmolVLM-shaped, layer {step.layers[0]}, tau {tau:.3f}")
        for name, values in t.items():
            print(f"  {name:16s} mean t {values.mean():+.3f}  open {(values > tau).double().mean():.0%}")
        for name, values in raw.items():
            print(f"  {name:16s} without re-centering: mean t {values.mean():+.3f}  open {(values > tau).double().mean():.0%}")
    assert closed >= 0.9, f"re-centred harmless+image gates must stay closed (closed {closed:.0%})"
    # the neutral image moves t; re-centering takes that shift out
    shift_raw = float(raw["harmless/image"].mean() - t["harmless/text"].mean())
    shift_recentred = float(t["harmless/image"].mean() - t["harmless/text"].mean())
    assert abs(shift_recentred) < abs(shift_raw)
    assert float((t["harmful/image"] > tau).double().mean()) > float((t["harmless/image"] > tau).double().mean())
    assert float(t["harmful/image"].mean()) > float(t["harmless/image"].mean())
