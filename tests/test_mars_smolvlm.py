"""MARS re-centering and gating on the SmolVLM2-shaped model with the real SmolLM2 text weights.

The vision side is random, but the language backbone receives a genuine, large offset from
image and video tokens: exactly what re-centering must remove.  Mechanics only (SmolLM2 does
not refuse).  Two fits: `media.segment: text` (MARS.md as written) and `media.segment: modality`
(the harmful end measured with neutral media too).  Run with `-s` to see the table.
"""

from __future__ import annotations

import pytest
from plans import TINY_FALLBACK

from steerpeft import load_recipe
from steerpeft.mars.evaluation import eval_sets, gate_values, mars_step
from steerpeft.models import build_smolvlm_shaped

pytestmark = pytest.mark.slow

OVERRIDES = ["data.limit=60", "steps.0.selector.candidates.start=15", "steps.0.selector.candidates.stop=19",
             # 60 prompts: every layer is past the 5% false-trigger limit; the mechanics still show
             TINY_FALLBACK,
             # SmolLM2 does not refuse, so the refusal score cannot rank layers
             "steps.0.selector.score=separation"]


@pytest.fixture(scope="module")
def model_and_processor():
    return build_smolvlm_shaped(video=True)


def _fit(model, processor, segment: str):
    recipe = load_recipe("mars", [*OVERRIDES, f"media.segment={segment}"])
    plan = recipe.fit(model, processor)
    split = recipe.split_prompts()
    sets = eval_sets(model, processor, split["positive_validation"], split["negative_validation"],
                     modalities=["text", "image", "video"])
    t = {name: gate_values(plan, model, batches, name.split("/")[1]) for name, batches in sets.items()}
    raw = {name: gate_values(plan, model, batches, name.split("/")[1], recenter=False)
           for name, batches in sets.items() if not name.endswith("text")}
    return plan, t, raw


def _report(segment: str, plan, t, raw) -> dict[str, float]:
    step = mars_step(plan)
    tau = step.scaler.tau
    region = step.scaler.regions[step.layers[0]]
    opened = {name: float((values > tau).double().mean()) for name, values in t.items()}
    print(f"\nsegment {segment}: layer {step.layers[0]}, tau {tau:.3f}, "
          f"spans {[round(s, 2) for s in region.span_table().tolist()]}")
    for name, values in t.items():
        line = f"  {name:16s} mean t {values.mean():+.3f}  open {opened[name]:.0%}"
        if name in raw:
            line += (f"   without re-centering: mean t {raw[name].mean():+.3f}  "
                     f"open {(raw[name] > tau).double().mean():.0%}")
        print(line)
    return opened


def test_recentering_keeps_benign_media_closed(model_and_processor, capsys):
    model, processor = model_and_processor
    plan, t, raw = _fit(model, processor, "text")
    step = mars_step(plan)
    region = step.scaler.regions[step.layers[0]]
    # a real image offset was measured
    assert float(region.offsets[1].norm()) > 0.1 * float(region.unit.norm())
    assert float(region.offsets[2].norm()) > 0.1 * float(region.unit.norm())  # and a video offset
    with capsys.disabled():
        opened = _report("text", plan, t, raw)
    assert opened["harmless/image"] <= 0.05, "re-centred harmless+image gates must stay closed"
    assert opened["harmless/video"] <= 0.10
    for modality in ("image", "video"):
        # the neutral medium moves t; re-centering takes that shift out
        shift_raw = float(raw[f"harmless/{modality}"].mean() - t["harmless/text"].mean())
        shift_recentred = float(t[f"harmless/{modality}"].mean() - t["harmless/text"].mean())
        assert abs(shift_recentred) < abs(shift_raw)
        assert float(t[f"harmful/{modality}"].mean()) > float(t[f"harmless/{modality}"].mean())
    assert opened["harmful/video"] > opened["harmless/video"]


def test_modality_segment_opens_the_gate_for_harmful_media(model_and_processor, capsys):
    """With the text span, an image compresses the harmful/harmless gap along u to about a fifth,
    so harmful + image rarely reaches tau; measuring each medium's own span restores the scale."""
    model, processor = model_and_processor
    plan, t, raw = _fit(model, processor, "modality")
    step = mars_step(plan)
    spans = step.scaler.regions[step.layers[0]].span_table()
    assert spans[1] < 0.5 * spans[0], "the image shrinks the segment on this model"
    with capsys.disabled():
        opened = _report("modality", plan, t, raw)
    for modality in ("image", "video"):
        # the scale is restored: at the same tau, harmful + media opens about as often as harmful text
        # (with the text span, harmful + image opens on no row at all: the test above prints 0%)
        assert opened[f"harmful/{modality}"] >= 0.8 * opened["harmful/text"] > 0
        assert opened[f"harmful/{modality}"] > opened[f"harmless/{modality}"]
