"""Every shipped adapter in directions/ loads on the real SmolLM2 and does what its card records."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from steerpeft.adapters import load_adapter
from steerpeft.models import load_model

pytestmark = pytest.mark.slow

DIRECTIONS = Path(__file__).resolve().parents[1] / "directions"
SHIPPED = sorted(p for p in DIRECTIONS.iterdir() if (p / "effect.json").is_file())


def _builder():
    spec = importlib.util.spec_from_file_location("directions_build", DIRECTIONS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_directions_are_shipped():
    assert {p.name for p in SHIPPED} >= {"smollm2-135m-refusal-ablation", "smollm2-135m-mars"}


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_shipped_adapter_reproduces_its_recorded_effect(folder):
    record = json.loads((folder / "effect.json").read_text())
    assert "README.md" in {p.name for p in folder.iterdir()} and (folder / "adapter_config.json").is_file()
    base, tokenizer = load_model()
    steered = load_adapter(load_model()[0], folder)
    effect = _builder().measure_effect(base, steered, tokenizer)
    for key, expected in record["effect"].items():
        assert effect[key] == pytest.approx(expected, rel=1e-3, abs=1e-6), key
    if record["recipe"] == "ablation":
        assert record["effect"]["changed_harmful"] == 1.0  # ablation acts on every prompt
    if record["recipe"] == "mars":
        # the gate is per prompt: it must leave some harmless prompts untouched
        assert record["effect"]["changed_harmless"] < 1.0
