"""Multimodal prompt batches, built through each model's own processor and chat template.

MARS measures how much an image or a video shifts the residual stream (``delta^m_l``): the text
batch and the media batch must differ only by the media. So both go through the same path: one
user message per prompt, rendered by the processor's chat template with the generation prompt,
the media part first (``{"type": "image"}`` or ``{"type": "video"}``), then the text; the
processor then expands each placeholder into the model's image/video tokens and makes the pixel
tensors. Whatever the processor returns (``pixel_values``, ``image_grid_thw``,
``pixel_attention_mask``, ``image_sizes``, ``token_type_ids``, ...) is passed on untouched, so
the batch feeds ``model(**batch)`` and ``model.generate(**batch)`` of that family as is.

A plain tokenizer (text-only model) only has the ``"text"`` modality, encoded by
:func:`steerpeft.inputs.text.encode_prompts`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from steerpeft.architectures import resolve_layout
from steerpeft.errors import ConfigError, DataError
from steerpeft.inputs.media import (
    native_image_size,
    native_video_size,
    neutral_images,
    neutral_videos,
    temporal_frame_multiple,
)
from steerpeft.inputs.modality import MODALITIES
from steerpeft.inputs.text import encode_prompts, text_tokenizer
from steerpeft.registry import suggest

__all__ = [
    "MODALITIES",
    "available_modalities",
    "build_batch",
    "media_for",
    "modality_batches",
    "processor_modalities",
    "video_frame_token_id",
]



def _is_processor(processor: Any) -> bool:
    """A multimodal processor wraps a tokenizer; a tokenizer does not."""
    return getattr(processor, "tokenizer", None) is not None


def processor_modalities(processor: Any) -> list[str]:
    """Modalities the processor can encode: ``"text"``, plus ``"image"`` / ``"video"`` when it
    has an image / video processor. Says nothing about the model (see :func:`available_modalities`)."""
    found = ["text"]
    if _is_processor(processor):
        if getattr(processor, "image_processor", None) is not None:
            found.append("image")
        if getattr(processor, "video_processor", None) is not None:
            found.append("video")
    return found


def available_modalities(model: Any, processor: Any) -> list[str]:
    """Modalities both the model and the processor handle, in :data:`MODALITIES` order.

    ``"text"`` always; ``"image"`` when the model config names an image token and the processor
    has an image processor; ``"video"`` likewise with a video token and a video processor.
    Models that put video frames into image tokens (SmolVLM2) have ``"video"`` when the
    processor marks each frame (see :func:`video_frame_token_id`).
    """
    layout = resolve_layout(model)
    frames_as_images = layout.image_token_id is not None and video_frame_token_id(processor) is not None
    model_side = {
        "text": True,
        "image": layout.image_token_id is not None,
        "video": layout.video_token_id is not None or frames_as_images,
    }
    supported = processor_modalities(processor)
    return [m for m in MODALITIES if model_side[m] and m in supported]


def video_frame_token_id(processor: Any) -> int | None:
    """The token that opens every video frame, for processors that encode frames as images.

    SmolVLM2's processor has a video processor but the model has no video token: each frame is
    an image block opened by ``<global-img>`` (a single unsplit image has one such block, a clip
    one per frame).  None for other processors.
    """
    marker = getattr(processor, "global_image_token", None)
    if not _is_processor(processor) or getattr(processor, "video_processor", None) is None or not marker:
        return None
    token_id = text_tokenizer(processor).convert_tokens_to_ids(marker)
    return token_id if isinstance(token_id, int) and token_id >= 0 else None


def _check_modality(processor: Any, modality: Any) -> None:
    if modality not in MODALITIES:
        hint = suggest(str(modality), list(MODALITIES))
        raise ConfigError(f"Unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}.{hint}")
    supported = processor_modalities(processor)
    if modality not in supported:
        kind = type(processor).__name__
        raise ConfigError(
            f"Modality {modality!r} is not supported by this {kind}: it supports {', '.join(supported)}. "
            "Pass the model's multimodal processor (AutoProcessor), not its tokenizer, for image or video."
        )


def _check_prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, str):
        raise DataError("prompts must be a list of strings, got a single string: wrap it in a list.")
    prompts = list(prompts)
    if not prompts:
        raise DataError("The prompt list is empty: give at least one prompt.")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise DataError(f"Prompt {i} is a {type(prompt).__name__}, not a string.")
    return prompts


def _check_media(modality: str, media: Any, count: int) -> list | None:
    if modality == "text":
        if media is not None:
            raise DataError("Modality 'text' takes no media: pass media=None (or choose 'image' / 'video').")
        return None
    if media is None:
        raise DataError(
            f"Modality {modality!r} needs one {modality} per prompt in `media`; "
            "media_for(...) makes neutral ones."
        )
    media = list(media)
    if len(media) != count:
        raise DataError(
            f"Got {len(media)} {modality}s for {count} prompts: give exactly one {modality} per prompt."
        )
    return media


def _render(processor: Any, prompt: str, modality: str) -> str:
    """One user message with the generation prompt, through the processor's chat template."""
    if not getattr(processor, "chat_template", None):
        raise ConfigError(
            f"{type(processor).__name__} has no chat template, so there is nowhere to put the "
            f"{modality} placeholder. Set processor.chat_template (the model's own template)."
        )
    content: list[dict[str, str]] = [] if modality == "text" else [{"type": modality}]
    content.append({"type": "text", "text": prompt})
    # The template is passed explicitly: SmolVLM's processor otherwise swaps in a different,
    # non-ChatML template for conversations that hold a video, and text and media prompts
    # must share one template for the offset to measure the media alone.
    rendered = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False,
        chat_template=processor.chat_template,
    )
    if isinstance(rendered, list):  # some versions return a list even for one conversation
        (rendered,) = rendered
    return rendered


def build_batch(
    processor: Any,
    prompts: list[str],
    modality: str,
    media: list | None = None,
    *,
    padding_side: str = "left",
    device: torch.device | str | None = None,
    video_fps: float | None = 1.0,
) -> dict[str, torch.Tensor]:
    """One padded batch of ``prompts``, each with its own medium (``media[i]`` goes with ``prompts[i]``).

    ``modality`` is ``"text"`` (``media`` must be None), ``"image"`` (``media``: one PIL image or
    ``(H, W, 3)`` array per prompt) or ``"video"`` (one clip per prompt: a list of frames or a
    ``(T, H, W, 3)`` uint8 array). Rows are padded on ``padding_side``; every tensor the
    processor makes is returned (moved to ``device`` if given). The chat template's special
    tokens are kept as rendered: no extra BOS is added, matching
    :func:`steerpeft.inputs.text.encode_prompts`. ``video_fps`` is the frame rate of the clips
    (neutral clips are 1 fps), given to processors that write frame timestamps into the prompt
    (SmolVLM2); None lets the processor guess.
    """
    prompts = _check_prompts(prompts)
    _check_modality(processor, modality)
    media = _check_media(modality, media, len(prompts))
    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    if not _is_processor(processor) or (modality == "text" and not getattr(processor, "chat_template", None)):
        return encode_prompts(processor, prompts, padding_side=padding_side, device=device)

    texts = [_render(processor, prompt, modality) for prompt in prompts]
    kwargs: dict[str, Any] = {}
    if modality == "image":
        kwargs["images"] = [[image] for image in media]  # nested: one image per sample
    elif modality == "video":
        kwargs["videos"] = media
        if video_fps is not None:
            kwargs["video_metadata"] = [_clip_metadata(clip, video_fps) for clip in media]
    tokenizer = text_tokenizer(processor)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        encoded = processor(text=texts, padding=True, add_special_tokens=False, return_tensors="pt", **kwargs)
    finally:
        tokenizer.padding_side = previous_side
    batch = {key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)}
    if device is not None:
        batch = {key: value.to(device) for key, value in batch.items()}
    return batch


def _clip_metadata(clip: Any, fps: float) -> Any:
    from transformers.video_utils import VideoMetadata

    frames = len(clip)
    return VideoMetadata(total_num_frames=frames, fps=float(fps), duration=frames / float(fps),
                         frames_indices=list(range(frames)))


def media_for(
    modality: str, count: int, processor: Any, *, seed: int = 0, video_frames: int = 4
) -> list | None:
    """``count`` neutral media sized for ``processor`` (None for ``"text"``).

    Images: :func:`~steerpeft.inputs.media.neutral_images` at
    :func:`~steerpeft.inputs.media.native_image_size`. Videos: ``video_frames`` frames (rounded up to
    the processor's ``temporal_patch_size``, e.g. 3 -> 4 for Qwen2-VL; the extra frames repeat the
    same colour) at :func:`~steerpeft.inputs.media.native_video_size`.
    """
    _check_modality(processor, modality)
    if modality == "text":
        return None
    if modality == "image":
        return neutral_images(count, native_image_size(processor), seed)
    if isinstance(video_frames, bool) or not isinstance(video_frames, int) or video_frames < 1:
        raise ConfigError(f"video_frames must be an int >= 1, got {video_frames!r}.")
    multiple = temporal_frame_multiple(processor)
    frames = -(-video_frames // multiple) * multiple
    return neutral_videos(count, frames, native_video_size(processor), seed)


def modality_batches(
    processor: Any,
    prompts: list[str],
    modality: str,
    *,
    batch_size: int = 8,
    seed: int = 0,
    video_frames: int = 4,
    device: torch.device | str | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Left-padded batches of ``prompts``, prompt ``i`` paired with neutral medium ``i``.

    The media are drawn once for the whole list, so the pairing does not depend on
    ``batch_size``. Inputs are checked now, not when the first batch is asked for.
    """
    prompts = _check_prompts(prompts)
    _check_modality(processor, modality)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    media = media_for(modality, len(prompts), processor, seed=seed, video_frames=video_frames)
    return _iterate(processor, prompts, modality, media, batch_size, device)


def _iterate(
    processor: Any,
    prompts: Sequence[str],
    modality: str,
    media: list | None,
    batch_size: int,
    device: torch.device | str | None,
) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        chunk_media = None if media is None else media[start : start + batch_size]
        yield build_batch(processor, chunk, modality, chunk_media, device=device)
