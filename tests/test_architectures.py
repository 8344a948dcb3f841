"""The language backbone is found by exact path in every supported family, and tiny VLMs run."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch
from tiny_models import (
    FRAMES_AS_IMAGES,
    TEXT_FAMILIES,
    VLM_FAMILIES,
    supports_video,
    tiny_image,
    tiny_text_model,
    tiny_video,
    tiny_vlm,
)
from torch import nn

from steerpeft.architectures import (
    ModelLayout,
    decoder_layers,
    get_module,
    resolve_layout,
    text_config,
    unwrap_model,
)
from steerpeft.errors import ArchitectureError, ShapeError
from steerpeft.inputs.batches import video_frame_token_id

# The exact paths users will see, per family (transformers 5 module layout).
EXPECTED_PATHS = {
    **{f: ("model.layers", "model.embed_tokens") for f in TEXT_FAMILIES},
    "llava": ("model.language_model.layers", "model.language_model.embed_tokens"),
    "llava_onevision": ("model.language_model.layers", "model.language_model.embed_tokens"),
    "qwen2_vl": ("model.language_model.layers", "model.language_model.embed_tokens"),
    "qwen2_5_vl": ("model.language_model.layers", "model.language_model.embed_tokens"),
    "gemma3": ("model.language_model.layers", "model.language_model.embed_tokens"),
    "idefics3": ("model.text_model.layers", "model.text_model.embed_tokens"),
    "smolvlm": ("model.text_model.layers", "model.text_model.embed_tokens"),
}
POST_NORM_FAMILIES = {"gemma2", "gemma3_text", "gemma3"}
ALL_FAMILIES = TEXT_FAMILIES + VLM_FAMILIES


@functools.cache
def _model(family: str):
    """One model per family for the whole module (tests only read it)."""
    if family in TEXT_FAMILIES:
        return tiny_text_model(family, num_layers=3)
    return tiny_vlm(family)


def _language_model(model: nn.Module) -> nn.Module:
    """The text backbone, found independently of steerpeft: the module owning the input embeddings."""
    embedding = model.get_input_embeddings()
    owners = [m for m in model.modules() if any(c is embedding for c in m.children())]
    assert len(owners) == 1
    return owners[0]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_resolve_layout_finds_the_text_backbone(family: str) -> None:
    model, _ = _model(family)
    layout = resolve_layout(model)
    backbone = _language_model(model)
    tconf = model.config.get_text_config()

    assert (layout.layers_path, layout.embedding_path) == EXPECTED_PATHS[family]
    assert layout.family == model.config.model_type
    assert decoder_layers(model, layout) is backbone.layers
    assert get_module(model, layout.embedding_path) is model.get_input_embeddings()
    assert layout.num_layers == tconf.num_hidden_layers == len(backbone.layers)
    assert layout.hidden_size == tconf.hidden_size
    assert text_config(model) is tconf
    assert layout.post_norm is (family in POST_NORM_FAMILIES)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_residual_writers_are_linear_layers_of_the_text_backbone(family: str) -> None:
    model, _ = _model(family)
    layout = resolve_layout(model)
    backbone_modules = {id(m) for m in _language_model(model).modules()}
    for index in range(layout.num_layers):
        paths = layout.residual_writer_paths(index)
        assert paths == [
            f"{layout.layers_path}.{index}.self_attn.o_proj",
            f"{layout.layers_path}.{index}.mlp.down_proj",
        ]
        layer = decoder_layers(model, layout)[index]
        for path in paths:
            module = get_module(model, path)
            assert isinstance(module, nn.Linear)
            assert module.out_features == layout.hidden_size
            assert id(module) in backbone_modules
            assert any(module is m for m in layer.modules())
            assert ".visual." not in path and "vision" not in path


def test_qwen2_5_vl_vision_down_projs_are_never_writers() -> None:
    model, _ = _model("qwen2_5_vl")
    layout = resolve_layout(model)
    vision_down = [
        n for n, _ in model.named_modules() if n.startswith("model.visual.") and n.endswith("mlp.down_proj")
    ]
    assert vision_down, "the tiny Qwen2.5-VL should have vision down_proj modules (the trap being tested)"
    writers = {p for i in range(layout.num_layers) for p in layout.residual_writer_paths(i)}
    assert writers.isdisjoint(vision_down)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_image_and_video_token_ids_come_from_the_config(family: str) -> None:
    model, processor = _model(family)
    layout = resolve_layout(model)
    config = model.config
    assert layout.image_token_id == getattr(config, "image_token_id", None)
    assert layout.video_token_id == getattr(config, "video_token_id", None)
    if family in TEXT_FAMILIES:
        assert layout.image_token_id is None and layout.video_token_id is None
        return
    assert layout.image_token_id is not None
    # The tokenizer's image token is the one carrying image features. (Gemma3Processor.image_token_id
    # is <start_of_image>, the placeholder it expands, not the soft token the model replaces.)
    assert layout.image_token_id == processor.tokenizer.image_token_id
    if family in FRAMES_AS_IMAGES:
        assert layout.video_token_id is None
        assert video_frame_token_id(processor) == processor.tokenizer.convert_tokens_to_ids("<global-img>")
    elif supports_video(family):
        assert layout.video_token_id == processor.tokenizer.video_token_id is not None


def test_layer_path_and_index_checks() -> None:
    model, _ = _model("llama")
    layout = resolve_layout(model)
    assert layout.layer_path(0) == "model.layers.0"
    assert layout.layer_path(2) == "model.layers.2"
    with pytest.raises(ShapeError, match=r"0\.\.2"):
        layout.layer_path(3)
    with pytest.raises(ShapeError, match="negative"):
        layout.layer_path(-1)
    with pytest.raises(ShapeError, match="int"):
        layout.residual_writer_paths(True)
    with pytest.raises(ShapeError, match=r"0\.\.2"):
        layout.residual_writer_paths(7)


def test_bare_base_models_resolve_without_the_head_prefix() -> None:
    model, _ = _model("llama")
    layout = resolve_layout(model.model)
    assert (layout.layers_path, layout.embedding_path) == ("layers", "embed_tokens")
    vlm, _ = _model("gemma3")
    layout = resolve_layout(vlm.model)
    assert layout.layers_path == "language_model.layers"
    assert decoder_layers(vlm.model, layout) is vlm.model.language_model.layers


def test_peft_wrapped_model_resolves_to_the_same_paths() -> None:
    from peft import LoraConfig, get_peft_model

    model, _ = tiny_text_model("llama", num_layers=2)
    plain = resolve_layout(model)
    lora = LoraConfig(r=2, target_modules=["q_proj", "o_proj"], lora_alpha=4)
    wrapped = get_peft_model(model, lora)
    assert unwrap_model(wrapped) is model
    assert unwrap_model(wrapped.base_model) is model
    layout = resolve_layout(wrapped)
    assert layout == plain
    assert decoder_layers(wrapped, layout) is model.model.layers
    # o_proj is now a LoRA layer wrapping the original Linear; the path still names it.
    o_proj = get_module(wrapped, layout.residual_writer_paths(0)[0])
    assert o_proj is model.model.layers[0].self_attn.o_proj
    assert isinstance(o_proj.base_layer, nn.Linear)


@pytest.mark.parametrize(
    "lora",
    [
        {"target_modules": ["embed_tokens", "down_proj"]},  # LoRA layers wrapping the embedding
        {"target_modules": ["q_proj"], "modules_to_save": ["embed_tokens", "o_proj"]},  # full copies
    ],
)
def test_peft_wrapped_embedding_and_writers_still_resolve(lora: dict) -> None:
    from peft import LoraConfig, get_peft_model

    model, _ = tiny_text_model("qwen2", num_layers=2)
    plain = resolve_layout(model)
    wrapped = get_peft_model(model, LoraConfig(r=2, **lora))
    assert resolve_layout(wrapped) == plain


def test_manual_paths_override_and_are_validated() -> None:
    model, _ = _model("llava")
    layout = resolve_layout(
        model, layers_path="model.language_model.layers", embedding_path="model.language_model.embed_tokens"
    )
    assert layout == resolve_layout(model)

    # The vision tower also has a 2-entry ModuleList: refused because it is not next to the embedding.
    vision = "model.vision_tower.encoder.layers"
    assert len(get_module(model, vision)) == layout.num_layers
    with pytest.raises(ArchitectureError, match="not in the same module"):
        resolve_layout(model, layers_path=vision)
    with pytest.raises(ArchitectureError, match="not a non-empty nn.ModuleList"):
        resolve_layout(model, layers_path="model.language_model.embed_tokens")
    with pytest.raises(ArchitectureError, match="no child 'decoder'"):
        resolve_layout(model, layers_path="model.language_model.decoder")
    with pytest.raises(ArchitectureError, match="not an nn.Embedding"):
        resolve_layout(model, embedding_path="model.language_model.norm")
    with pytest.raises(ArchitectureError, match="not in the same module"):
        resolve_layout(model, embedding_path="model.vision_tower.embeddings.position_embedding")


def test_smolvlm_table_entry() -> None:
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    config = SmolVLMConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        text_config={
            "model_type": "llama",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 100,
        },
        image_token_id=99,
    )
    model = SmolVLMForConditionalGeneration(config)
    layout = resolve_layout(model)
    assert (layout.layers_path, layout.embedding_path) == (
        "model.text_model.layers",
        "model.text_model.embed_tokens",
    )
    assert decoder_layers(model, layout) is model.model.text_model.layers
    assert layout.image_token_id == 99 and layout.video_token_id is None


def test_families_outside_the_table_are_probed_at_exact_paths() -> None:
    from transformers import Olmo2Config, Olmo2ForCausalLM

    config = Olmo2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        pad_token_id=0,
    )
    model = Olmo2ForCausalLM(config)
    layout = resolve_layout(model)
    assert (layout.family, layout.layers_path, layout.embedding_path) == (
        "olmo2",
        "model.layers",
        "model.embed_tokens",
    )
    assert layout.post_norm  # OLMo2 normalises sub-layer outputs, like Gemma2/3
    assert layout.residual_writer_paths(2) == [
        "model.layers.2.self_attn.o_proj",
        "model.layers.2.mlp.down_proj",
    ]


def test_a_moved_table_path_falls_back_to_probing(monkeypatch: pytest.MonkeyPatch) -> None:
    from steerpeft import architectures

    model, _ = _model("llama")
    expected = resolve_layout(model)
    stale = architectures.KnownPaths("decoder.layers", "decoder.embed_tokens")
    monkeypatch.setitem(architectures.KNOWN_ARCHITECTURES, "llama", stale)
    assert resolve_layout(model) == expected


def test_layer_count_must_match_the_text_config() -> None:
    model, _ = tiny_text_model("qwen2", num_layers=2)
    model.model.layers.append(nn.Identity())
    with pytest.raises(ArchitectureError, match="num_hidden_layers=2"):
        resolve_layout(model)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(8, 8)
        self.ffn = nn.Linear(8, 8)


class _Weird(nn.Module):
    """An architecture steerpeft has never seen: odd module names everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="weird", hidden_size=8, num_hidden_layers=2)
        self.tok_emb = nn.Embedding(10, 8)
        self.stack = nn.ModuleList([_Block(), _Block()])


def test_unknown_architecture_names_the_fix() -> None:
    with pytest.raises(ArchitectureError) as info:
        resolve_layout(_Weird())
    message = str(info.value)
    assert "weird" in message
    assert "layers_path" in message and "model.layers_path" in message and "embedding_path" in message
    assert "stack (2)" in message  # lists the candidates it saw


def test_unknown_architecture_works_with_manual_paths() -> None:
    model = _Weird()
    layout = resolve_layout(model, layers_path="stack", embedding_path="tok_emb")
    assert layout == ModelLayout(
        family="weird",
        layers_path="stack",
        embedding_path="tok_emb",
        num_layers=2,
        hidden_size=8,
        post_norm=False,
        image_token_id=None,
        video_token_id=None,
        residual_writer_names=(),
    )
    assert layout.layer_path(1) == "stack.1"
    model.other_emb = nn.Embedding(10, 4)
    with pytest.raises(ArchitectureError, match="dimension 4 .* hidden_size=8"):
        resolve_layout(model, layers_path="stack", embedding_path="other_emb")
    with pytest.raises(ArchitectureError, match="residual stream"):
        layout.residual_writer_paths(0)


def test_get_module_reports_the_missing_part() -> None:
    model, _ = _model("llama")
    assert get_module(model, "") is model
    with pytest.raises(ArchitectureError, match=r"model\.layers \(ModuleList\) has no child '9'"):
        get_module(model, "model.layers.9.mlp")


def test_tiny_models_are_deterministic_by_seed() -> None:
    a, _ = tiny_text_model("qwen3", seed=3, num_layers=2)
    b, _ = tiny_text_model("qwen3", seed=3, num_layers=2)
    c, _ = tiny_text_model("qwen3", seed=4, num_layers=2)
    wa, wb, wc = (m.model.layers[0].mlp.down_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert not a.training and wa.dtype == torch.float32


def test_text_model_tokenizer_and_generate() -> None:
    model, tok = _model("gemma2")
    assert model.config.vocab_size == len(tok)
    assert tok.pad_token == "<|im_end|>"
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "Hello"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2


def _chat(processor, *parts: dict):
    messages = [{"role": "user", "content": [*parts, {"type": "text", "text": "What is this?"}]}]
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_vlm_smoke_text_image_video(family: str) -> None:
    model, processor = _model(family)
    layout = resolve_layout(model)
    vocab = model.config.get_text_config().vocab_size
    assert vocab == len(processor.tokenizer)
    cases = {"text": _chat(processor), "image": _chat(processor, {"type": "image", "image": tiny_image()})}
    if supports_video(family):
        cases["video"] = _chat(processor, {"type": "video", "video": tiny_video(2)})
        cases["video_array"] = _chat(processor, {"type": "video", "video": tiny_video(4, as_array=True)})
    with torch.no_grad():
        for name, inputs in cases.items():
            ids = inputs["input_ids"]
            n_image = int((ids == layout.image_token_id).sum())
            if family in FRAMES_AS_IMAGES:  # frames are images, each opened by the frame marker
                frames = int((ids == video_frame_token_id(processor)).sum())
                assert (n_image > 0) == (name != "text"), name
                assert (frames >= 2) == name.startswith("video"), name
            else:
                n_video = (
                    int((ids == layout.video_token_id).sum()) if layout.video_token_id is not None else 0
                )
                assert (n_image > 0) == (name == "image"), name
                assert (n_video > 0) == name.startswith("video"), name
            logits = model(**inputs).logits
            assert logits.shape == (1, ids.shape[1], vocab)
            assert torch.isfinite(logits).all()
        generated = model.generate(**cases["image"], max_new_tokens=2, do_sample=False)
        assert generated.shape[1] == cases["image"]["input_ids"].shape[1] + 2


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_vlm_batched_mixed_modalities(family: str) -> None:
    model, processor = tiny_vlm(family)  # fresh: padding_side is changed below
    processor.tokenizer.padding_side = "left"
    conversations = [
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": tiny_image()}, {"type": "text", "text": "Hm?"}],
            }
        ],
        [{"role": "user", "content": "Hi"}],
    ]
    # SmolVLMProcessor writes image and video pixels into one `pixel_values`, so a batch cannot
    # mix the two there (the video's frames replace the images): steerpeft batches one modality.
    if supports_video(family) and family not in FRAMES_AS_IMAGES:
        video = [{"type": "video", "video": tiny_video(2)}, {"type": "text", "text": "And this?"}]
        conversations.append([{"role": "user", "content": video}])
    inputs = processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
    )
    assert inputs["input_ids"].shape[0] == len(conversations)
    assert (inputs["attention_mask"][:, -1] == 1).all()  # left padding
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert generated.shape == (len(conversations), inputs["input_ids"].shape[1] + 1)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_vlm_two_step_processor_call_matches_chat_template(family: str) -> None:
    _, processor = _model(family)
    image = tiny_image((10, 200, 90))
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Hi"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert isinstance(text, str)
    direct = processor(text=[text], images=[image], return_tensors="pt")
    templated = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert torch.equal(direct["input_ids"], templated["input_ids"])


def test_video_is_refused_where_unsupported() -> None:
    assert [f for f in VLM_FAMILIES if supports_video(f)] == [
        "llava_onevision", "qwen2_vl", "qwen2_5_vl", "smolvlm",
    ]
    _, processor = _model("llava")
    with pytest.raises(Exception, match="unsupported content part: video"):
        _chat(processor, {"type": "video", "video": tiny_video(2)})
