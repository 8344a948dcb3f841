"""Files written by steerkit 0.1.0, before the rename to steerpeft, still load and steer the same.

The fixtures in `fixtures/legacy-steerkit-0.1` were written by the old code (its
`make_fixture.py`): a plan (`steerkit-plan/1`), a STEER adapter (old `peft_type`, old tensor
key names, `steerkit.json`) and a plain LoRA, with the last-position logits they gave.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import tiny_text_model

from steerpeft.adapters import load_adapter
from steerpeft.formats import LEGACY_STEER_PEFT_TYPES
from steerpeft.inputs.text import encode_prompts
from steerpeft.plan import Plan

FIXTURES = Path(__file__).parent / "fixtures" / "legacy-steerkit-0.1"
PROMPTS = ["Hi there", "Tell me a story about a robot"]


@pytest.fixture(scope="module")
def llama():
    return tiny_text_model("llama")


@pytest.fixture(scope="module")
def expected():
    return load_file(str(FIXTURES / "expected_logits.safetensors"))


def _last_logits(model, tok) -> torch.Tensor:
    batch = encode_prompts(tok, PROMPTS, padding_side="left")
    with torch.no_grad():
        return model(**batch).logits[:, -1, :256]


def test_the_fixtures_really_are_old_files():
    config = json.loads((FIXTURES / "steer-adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] in LEGACY_STEER_PEFT_TYPES
    assert json.loads((FIXTURES / "plan" / "plan.json").read_text())["format"] == "steerkit-plan/1"
    assert (FIXTURES / "steer-adapter" / "steerkit.json").is_file()


def test_old_plan_loads_and_steers_as_before(llama, expected):
    model, tok = llama
    plan = Plan.load(FIXTURES / "plan")
    with plan.apply(model):
        steered = _last_logits(model, tok)
    assert (steered - expected["steer_logits"]).abs().max() < 1e-5


def test_old_steer_adapter_loads_and_steers_as_before(llama, expected):
    model, tok = llama
    plain = _last_logits(model, tok)
    wrapped = load_adapter(model, FIXTURES / "steer-adapter")
    try:
        steered = _last_logits(model, tok)
    finally:
        wrapped.unload()
    assert (steered - expected["steer_logits"]).abs().max() < 1e-5
    assert (steered - plain).abs().max() > 1e-3, "the adapter must steer"


def test_old_steer_adapter_loads_in_stock_peft(llama, expected):
    from peft import PeftModel

    import steerpeft  # noqa: F401  (registers STEER, old peft_type included)

    model, tok = llama
    wrapped = PeftModel.from_pretrained(model, str(FIXTURES / "steer-adapter"))
    try:
        steered = _last_logits(model, tok)
    finally:
        wrapped.unload()
    assert (steered - expected["steer_logits"]).abs().max() < 1e-5


def test_old_lora_adapter_loads(llama, expected):
    model, tok = llama
    wrapped = load_adapter(model, FIXTURES / "lora-adapter")
    try:
        steered = _last_logits(model, tok)
    finally:
        wrapped.unload()
    assert (steered - expected["lora_logits"]).abs().max() < 1e-5
