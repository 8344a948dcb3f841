"""Neutral media for MARS re-centering: solid-colour images and constant-colour video clips.

MARS step 3 estimates, per modality, the mean shift that merely *carrying* an image or a video
adds to the residual stream (``delta^m_l``). The media used for that must say nothing, so they are
solid colours drawn uniformly at random in RGB, shown at the size the model's processor works at.

Colours come from ``numpy.random.default_rng(seed)``: the same seed always gives the same media,
and the first ``k`` colours do not depend on ``count`` (asking for more media only appends), so
prompt ``i`` keeps its medium when a calibration set grows. Clip ``i`` of :func:`neutral_videos`
has the colour of image ``i`` of :func:`neutral_images` for the same seed.

Sizes are ``(height, width)`` everywhere in this module (PIL itself speaks ``(width, height)``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from steerpeft.errors import ConfigError

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DYNAMIC_RESOLUTION_SIDE",
    "native_image_size",
    "native_video_size",
    "neutral_colours",
    "neutral_images",
    "neutral_videos",
    "temporal_frame_multiple",
]

DEFAULT_IMAGE_SIZE: tuple[int, int] = (224, 224)
"""Used when a processor states no size at all."""

DYNAMIC_RESOLUTION_SIDE = 448
"""Square side chosen for dynamic-resolution processors (Qwen2-VL style pixel budgets).

They have no native size, only a pixel range (Qwen2-VL: 56^2 to ~1000^2 pixels), and the largest
allowed image would cost thousands of tokens. 448x448 is 256 tokens for Qwen2-VL (patch 14,
merge 2): a typical photo budget. It is clamped into the processor's range and rounded to its
patch grid, so tiny test processors get what they allow."""


def _field(container: Any, key: str) -> Any:
    """``container[key]`` for dicts, ``container.key`` for SizeDict-like objects; None if absent."""
    if container is None:
        return None
    if isinstance(container, Mapping):
        return container.get(key)
    return getattr(container, key, None)


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return int(value)


def _media_processor(processor: Any, attribute: str) -> Any:
    """The image/video sub-processor of a multimodal processor, or the object itself."""
    inner = getattr(processor, attribute, None)
    return inner if inner is not None else processor


def _pixel_budget_side(media_processor: Any, preferred_side: int) -> int | None:
    """Square side for a Qwen2-VL-style processor (pixel budget + patch grid), else None.

    These processors (Qwen2/2.5/3-VL, GLM-4V, ...) carry ``patch_size`` and ``merge_size`` and
    keep their pixel range in ``size["shortest_edge"]`` / ``size["longest_edge"]`` (pixel
    *counts*, not edges), or in ``min_pixels`` / ``max_pixels``.
    """
    patch = _positive_int(getattr(media_processor, "patch_size", None))
    merge = _positive_int(getattr(media_processor, "merge_size", None))
    if patch is None or merge is None:
        return None
    size = getattr(media_processor, "size", None)
    min_pixels = _positive_int(_field(size, "min_pixels")) or _positive_int(
        getattr(media_processor, "min_pixels", None)
    )
    max_pixels = _positive_int(_field(size, "max_pixels")) or _positive_int(
        getattr(media_processor, "max_pixels", None)
    )
    min_pixels = min_pixels or _positive_int(_field(size, "shortest_edge"))
    max_pixels = max_pixels or _positive_int(_field(size, "longest_edge"))
    factor = patch * merge
    side = max(factor, round(preferred_side / factor) * factor)
    if max_pixels is not None and side * side > max_pixels:
        side = max(factor, math.isqrt(max_pixels) // factor * factor)
    if min_pixels is not None and side * side < min_pixels:
        side = math.ceil(math.sqrt(min_pixels) / factor) * factor
    return side


def _edge_rule_size(media_processor: Any) -> tuple[int, int] | None:
    """(height, width) from the usual ``max_image_size`` / ``crop_size`` / ``size`` fields."""
    # Idefics3 / SmolVLM: images are resized to size["longest_edge"] and cut into square tiles of
    # max_image_size["longest_edge"], the vision encoder's resolution.
    tile = _positive_int(_field(getattr(media_processor, "max_image_size", None), "longest_edge"))
    if tile is not None:
        return tile, tile
    # CLIP-style: resize the shortest edge, then centre-crop; the crop is what the encoder sees.
    if getattr(media_processor, "do_center_crop", False):
        crop = getattr(media_processor, "crop_size", None)
        height, width = _positive_int(_field(crop, "height")), _positive_int(_field(crop, "width"))
        if height and width:
            return height, width
    size = getattr(media_processor, "size", None)
    height, width = _positive_int(_field(size, "height")), _positive_int(_field(size, "width"))
    if height and width:
        return height, width
    for key in ("shortest_edge", "longest_edge"):
        edge = _positive_int(_field(size, key))
        if edge is not None:
            return edge, edge
    if isinstance(size, (int, float)) and _positive_int(size):
        return int(size), int(size)
    return None


def _native_size(media_processor: Any, preferred_side: int) -> tuple[int, int]:
    side = _pixel_budget_side(media_processor, preferred_side)
    if side is not None:
        return side, side
    return _edge_rule_size(media_processor) or DEFAULT_IMAGE_SIZE


def native_image_size(processor: Any, *, preferred_side: int = DYNAMIC_RESOLUTION_SIDE) -> tuple[int, int]:
    """``(height, width)`` at which the processor's image side works.

    ``processor`` is a multimodal processor (its ``image_processor`` is read) or an image
    processor itself. First rule that applies:

    1. Pixel-budget processors (``patch_size`` and ``merge_size`` set: Qwen2-VL family): a square
       of ``preferred_side`` clamped into ``[min_pixels, max_pixels]`` and rounded to a multiple
       of ``patch_size * merge_size`` (see :data:`DYNAMIC_RESOLUTION_SIDE`).
    2. ``max_image_size["longest_edge"]`` (Idefics3 / SmolVLM tile), as a square. The processor
       upscales every image to ``size["longest_edge"]`` and splits it into such tiles, so a solid
       image of any square size yields the same tokens; the tile is the cheapest to make.
    3. ``crop_size`` when ``do_center_crop`` is on (CLIP, LLaVA).
    4. ``size["height"]`` / ``size["width"]`` (SigLIP, Gemma3, LLaVA-OneVision base resolution).
    5. ``size["shortest_edge"]`` or ``size["longest_edge"]`` as a square.
    6. :data:`DEFAULT_IMAGE_SIZE` (224x224), also for plain tokenizers.
    """
    return _native_size(_media_processor(processor, "image_processor"), preferred_side)


def native_video_size(processor: Any, *, preferred_side: int = DYNAMIC_RESOLUTION_SIDE) -> tuple[int, int]:
    """``(height, width)`` of video frames: the rules of :func:`native_image_size` applied to the
    processor's ``video_processor`` (its image processor when it has none). Video processors
    often have their own, smaller, sizes (Qwen2-VL: a lower per-frame pixel budget)."""
    video_processor = getattr(processor, "video_processor", None)
    if video_processor is None:
        return native_image_size(processor, preferred_side=preferred_side)
    return _native_size(video_processor, preferred_side)


def temporal_frame_multiple(processor: Any) -> int:
    """Frame counts the video processor needs a multiple of (``temporal_patch_size``, else 1).

    Qwen2-VL groups frames in pairs (``temporal_patch_size=2``): recent transformers pad an odd
    clip by repeating its last frame, older ones refuse it.
    """
    video_processor = _media_processor(processor, "video_processor")
    return _positive_int(getattr(video_processor, "temporal_patch_size", None)) or 1


def _check_count(count: Any, what: str) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"{what} must be an int >= 0, got {count!r}.")
    return count


def _check_size(size: Any) -> tuple[int, int]:
    try:
        height, width = size
    except (TypeError, ValueError):
        raise ConfigError(f"size must be (height, width), got {size!r}.") from None
    for value in (height, width):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"size must be two positive ints (height, width), got {size!r}.")
    return height, width


def neutral_colours(count: int, seed: int = 0) -> np.ndarray:
    """``(count, 3)`` uint8 RGB colours, uniform over 0..255, deterministic per ``seed``.

    Drawn one colour at a time from a fresh generator, so colour ``i`` depends only on ``seed``
    and ``i``, never on ``count``.
    """
    _check_count(count, "count")
    rng = np.random.default_rng(seed)
    colours = [rng.integers(0, 256, size=3, dtype=np.uint8) for _ in range(count)]
    return np.stack(colours) if colours else np.zeros((0, 3), dtype=np.uint8)


def neutral_images(count: int, size: tuple[int, int], seed: int = 0) -> list[Image.Image]:
    """``count`` solid RGB images of ``size`` = ``(height, width)``, one random colour each."""
    height, width = _check_size(size)
    return [
        Image.new("RGB", (width, height), tuple(int(c) for c in colour))
        for colour in neutral_colours(count, seed)
    ]


def neutral_videos(count: int, frames: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """``count`` constant-colour clips, each a uint8 array ``(frames, height, width, 3)``.

    Every transformers video processor accepts such arrays (one per video). Each clip has one
    random colour (clip ``i`` the colour of ``neutral_images(...)[i]`` for the same seed) in all of
    its frames. ``frames`` is used as given: for processors that group frames
    (``temporal_patch_size``), round it up with :func:`temporal_frame_multiple` first, as
    :func:`steerpeft.inputs.batches.media_for` does.
    """
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ConfigError(f"frames must be an int >= 1, got {frames!r}.")
    height, width = _check_size(size)
    clips = []
    for colour in neutral_colours(count, seed):
        clip = np.empty((frames, height, width, 3), dtype=np.uint8)
        clip[...] = colour
        clips.append(clip)
    return clips
