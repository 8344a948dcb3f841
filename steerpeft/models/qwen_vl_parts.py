"""The parts of a Qwen2.5-VL-shaped model: tokenizer with a chat template for media parts, config, processor.

Shared by `qwen_vl_shaped` (a small random vision tower on a real Qwen2 text model) and the
benchmarks (random-weight 7B shapes): a Qwen-VL model around any Qwen2 / Qwen2.5 tokenizer.
"""

from __future__ import annotations

import logging
import pathlib
from typing import TYPE_CHECKING, Any

from steerpeft.errors import SteerpeftError
from steerpeft.models.gguf import drop_loading_details

if TYPE_CHECKING:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLProcessor

logger = logging.getLogger(__name__)

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
QWEN_VL_IMAGE_PIXELS = (56 * 56, 168 * 168)
QWEN_VL_VIDEO_PIXELS = (56 * 56, 112 * 112)

# Placed in front of the text model's own chat template: it turns message contents given as lists of
# {"type": "text" | "image" | "video"} parts into strings with the Qwen-VL placeholders, then the
# text model's template renders the messages as usual.  So text-only conversations (string contents
# or text parts) render exactly as the text model renders them, default system prompt included.
_PARTS_TO_TEXT = (
    "{%- set _steerpeft = namespace(messages=[]) -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string or message['content'] is none -%}"
    "{%- set _steerpeft.messages = _steerpeft.messages + [message] -%}"
    "{%- else -%}"
    "{%- set _text = namespace(value='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{%- set _text.value = _text.value + part['text'] -%}"
    "{%- elif part['type'] == 'image' -%}"
    "{%- set _text.value = _text.value + '<|vision_start|><|image_pad|><|vision_end|>' -%}"
    "{%- elif part['type'] == 'video' -%}"
    "{%- set _text.value = _text.value + '<|vision_start|><|video_pad|><|vision_end|>' -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set _steerpeft.messages = _steerpeft.messages + [dict(message, content=_text.value)] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set messages = _steerpeft.messages -%}"
)
# For a text model without a chat template: plain ChatML, no default system prompt.
_PLAIN_CHATML = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)


def qwen_vl_chat_template(text_template: str | None) -> str:
    """The text model's chat template, extended to render image and video parts as Qwen-VL placeholders."""
    return _PARTS_TO_TEXT + (text_template or _PLAIN_CHATML)


def _mrope_section(head_dim: int) -> list[int]:
    """Split of the rotary half-dimension into (time, height, width) as in the released models (2:3:3).

    Qwen2.5-VL-3B/7B (head dim 128) use [16, 24, 24]; head dim 64 (Qwen2.5-0.5B) gives [8, 12, 12].
    Text-only positions are the same in all three sections, so the split never changes text outputs.
    """
    half = head_dim // 2
    time_dim = half // 4
    height = (half - time_dim) // 2
    return [time_dim, height, half - time_dim - height]


def qwen_vl_tokenizer(text_folder: str | pathlib.Path) -> Any:
    """The tokenizer of the Qwen2 text model in `text_folder`, its chat template extended to image and video
    parts.

    Only the tokenizer files are read (`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`):
    the benchmarks build random-weight Qwen-VL shapes around it.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(text_folder)
    ids = [tokenizer.convert_tokens_to_ids(token) for token in VISION_TOKENS]
    missing = [t for t, i in zip(VISION_TOKENS, ids, strict=True) if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise SteerpeftError(
            f"The tokenizer of {text_folder} lacks the Qwen-VL tokens {', '.join(missing)}: it is not a "
            "Qwen2 / Qwen2.5 tokenizer."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if not template:
        logger.warning("%s has no chat template: the Qwen2.5-VL-shaped model uses plain ChatML.", text_folder)
    tokenizer.chat_template = qwen_vl_chat_template(template)
    drop_loading_details(tokenizer)
    return tokenizer


def qwen_vl_config(text_settings: dict[str, Any], vision_settings: dict[str, Any], tokenizer: Any, *,
                   tie_word_embeddings: bool) -> Qwen2_5_VLConfig:
    """A `Qwen2_5_VLConfig` from a Qwen2 text config (as a dict) and vision tower settings.

    The text settings get M-RoPE sections 2:3:3 of the rotary half-dimension (see `_mrope_section`);
    the vision tower projects to the text hidden size; the image, video and vision start / end token
    ids are read from `tokenizer` (see `qwen_vl_tokenizer`).
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLTextConfig, Qwen2_5_VLVisionConfig

    settings = dict(text_settings)
    for key in ("_name_or_path", "architectures", "dtype", "transformers_version", "model_type",
                "tie_word_embeddings", "quantization_config"):
        settings.pop(key, None)
    head_dim = settings.get("head_dim") or settings["hidden_size"] // settings["num_attention_heads"]
    rope = dict(settings.get("rope_parameters") or {"rope_type": "default", "rope_theta": 1e6})
    rope["mrope_section"] = _mrope_section(head_dim)
    settings["rope_parameters"] = rope
    vision = Qwen2_5_VLVisionConfig(**{**vision_settings, "out_hidden_size": settings["hidden_size"]})
    image_id, video_id = (tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>"))
    start_id, end_id = (tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>"))
    return Qwen2_5_VLConfig(
        text_config=Qwen2_5_VLTextConfig(**settings),
        vision_config=vision,
        image_token_id=image_id,
        video_token_id=video_id,
        vision_start_token_id=start_id,
        vision_end_token_id=end_id,
        tie_word_embeddings=tie_word_embeddings,
    )


def qwen_vl_processor(
    tokenizer: Any, vision: Any, *, image_pixels: tuple[int, int] | None = QWEN_VL_IMAGE_PIXELS,
    video_pixels: tuple[int, int] | None = QWEN_VL_VIDEO_PIXELS,
) -> Qwen2_5_VLProcessor:
    """The real Qwen-VL processor classes around `tokenizer`, sized for the vision config `vision`.

    `image_pixels` / `video_pixels`: (fewest, most) pixels per image / video frame; None keeps the
    processor classes' own defaults (those of the released Qwen2-VL / Qwen2.5-VL models).
    """
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil, Qwen2VLVideoProcessor

    grid = {"patch_size": vision.patch_size, "temporal_patch_size": vision.temporal_patch_size,
            "merge_size": vision.spatial_merge_size}
    image_size = {} if image_pixels is None else {
        "size": {"shortest_edge": image_pixels[0], "longest_edge": image_pixels[1]}}
    video_size = {} if video_pixels is None else {
        "size": {"shortest_edge": video_pixels[0], "longest_edge": video_pixels[1]}}
    image_processor = Qwen2VLImageProcessorPil(**image_size, **grid)
    video_processor = Qwen2VLVideoProcessor(
        **video_size,
        **grid,
        cap_pixels_per_frame=True,  # the reference behaviour (qwen-vl-utils); no effect at these sizes
    )
    return Qwen2_5_VLProcessor(
        image_processor, tokenizer, video_processor, chat_template=tokenizer.chat_template
    )
