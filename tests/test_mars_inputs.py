"""Neutral media and multimodal batches (steerpeft.inputs.media / steerpeft.inputs.batches) on every tiny
VLM."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from tiny_models import FRAMES_AS_IMAGES, VLM_FAMILIES, supports_video, tiny_text_model, tiny_vlm

from steerpeft.architectures import resolve_layout
from steerpeft.errors import ConfigError, DataError
from steerpeft.inputs.batches import (
    MODALITIES,
    available_modalities,
    build_batch,
    media_for,
    modality_batches,
    video_frame_token_id,
)
from steerpeft.inputs.media import (
    DEFAULT_IMAGE_SIZE,
    native_image_size,
    native_video_size,
    neutral_images,
    neutral_videos,
)
from steerpeft.inputs.text import encode_prompts

# Three lengths, so left padding really happens.
PROMPTS = [
    "Hi",
    "What colour is this?",
    "Describe everything you can see here in great detail, please, using many careful words.",
]


@functools.cache
def _vlm(family: str):
    model, processor = tiny_vlm(family)
    if family == "gemma3":
        # transformers initialises Gemma3's image projection to zeros, so every image embeds to the
        # same (zero) soft tokens and colours cannot matter. Randomise it (seeded) so that the
        # media-alignment checks below can see a misplaced image.
        projection = model.model.multi_modal_projector.mm_input_projection_weight
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            projection.copy_(torch.randn(projection.shape, generator=generator) * 0.5)
    return model, processor


def _modalities(family: str) -> tuple[str, ...]:
    return ("text", "image", "video") if supports_video(family) else ("text", "image")


CASES = [(family, modality) for family in VLM_FAMILIES for modality in _modalities(family)]
MEDIA_CASES = [case for case in CASES if case[1] != "text"]


def _last_logits(model, batch: dict[str, torch.Tensor], padding_side: str) -> torch.Tensor:
    with torch.no_grad():
        logits = model(**batch).logits
    if padding_side == "left":
        return logits[:, -1]
    last = batch["attention_mask"].sum(1) - 1
    return logits[torch.arange(logits.shape[0]), last]


# --------------------------------------------------------------------------- modalities


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_available_modalities_per_family(family: str) -> None:
    model, processor = _vlm(family)
    assert available_modalities(model, processor) == list(_modalities(family))


def test_plain_tokenizer_is_text_only_and_matches_encode_prompts() -> None:
    model, tok = tiny_text_model("llama", num_layers=2)
    assert available_modalities(model, tok) == ["text"]
    batch = build_batch(tok, PROMPTS, "text")
    reference = encode_prompts(tok, PROMPTS)
    assert batch.keys() == reference.keys()
    for key in batch:
        assert torch.equal(batch[key], reference[key])
    with pytest.raises(ConfigError, match="supports text"):
        build_batch(tok, PROMPTS, "image", neutral_images(3, (8, 8)))


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_text_batch_through_processor_matches_encode_prompts(family: str) -> None:
    # Text and media batches share the rendering path; for text it must agree with the
    # text-only encoding the rest of steerpeft uses.
    _, processor = _vlm(family)
    batch = build_batch(processor, PROMPTS, "text")
    reference = encode_prompts(processor, PROMPTS)
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert torch.equal(batch["attention_mask"], reference["attention_mask"])


# --------------------------------------------------------------------------- batches


@pytest.mark.parametrize(("family", "modality"), CASES)
def test_batch_runs_counts_media_tokens_and_matches_rows_alone(family: str, modality: str) -> None:
    model, processor = _vlm(family)
    layout = resolve_layout(model)
    media = media_for(modality, len(PROMPTS), processor, seed=1)
    batch = build_batch(processor, PROMPTS, modality, media, padding_side="left")

    mask = batch["attention_mask"]
    assert mask[:, -1].all() and not mask[:, 0].all(), "left padding expected"
    ids = batch["input_ids"]
    counts = {
        "image": (ids == layout.image_token_id).sum(1),
        "video": (ids == layout.video_token_id).sum(1) if layout.video_token_id is not None else None,
    }
    if family in FRAMES_AS_IMAGES:  # frames are image blocks: a video row opens two or more
        video_rows = ((ids == video_frame_token_id(processor)).sum(1) >= 2).long()
        counts = {"image": None if modality == "video" else counts["image"], "video": video_rows}
    for kind, count in counts.items():
        if count is None:
            continue
        if kind == modality:
            assert (count > 0).all(), f"every {modality} row needs {kind} tokens, got {count.tolist()}"
        else:
            assert (count == 0).all(), f"{modality} rows must hold no {kind} tokens, got {count.tolist()}"

    batched = _last_logits(model, batch, "left")
    for i, prompt in enumerate(PROMPTS):
        alone = build_batch(processor, [prompt], modality, None if media is None else [media[i]])
        single = _last_logits(model, alone, "left")[0]
        assert (batched[i] - single).abs().max().item() < 1e-4, f"row {i} differs from its own run"

    right = build_batch(processor, PROMPTS, modality, media, padding_side="right")
    assert right["attention_mask"][:, 0].all()
    assert (_last_logits(model, right, "right") - batched).abs().max().item() < 1e-4


@pytest.mark.parametrize(("family", "modality"), MEDIA_CASES)
def test_media_reach_the_logits(family: str, modality: str) -> None:
    # Guards the row-alignment check above: were media ignored, a misplaced medium would go unseen.
    model, processor = _vlm(family)
    media = media_for(modality, 2, processor, seed=3)
    prompts = PROMPTS[:2]
    straight = _last_logits(model, build_batch(processor, prompts, modality, media), "left")
    swapped = _last_logits(model, build_batch(processor, prompts, modality, media[::-1]), "left")
    assert (straight - swapped).abs().max().item() > 1e-3


@pytest.mark.parametrize(("family", "modality"), [("llava", "image"), ("qwen2_vl", "video")])
def test_modality_batches_pair_prompt_i_with_medium_i(family: str, modality: str) -> None:
    _, processor = _vlm(family)
    media = media_for(modality, len(PROMPTS), processor, seed=5)
    whole = build_batch(processor, PROMPTS, modality, media)
    pixels = "pixel_values" if modality == "image" else "pixel_values_videos"
    for batch_size in (1, 2, 8):
        batches = list(modality_batches(processor, PROMPTS, modality, batch_size=batch_size, seed=5))
        assert [b["input_ids"].shape[0] for b in batches] == [
            min(batch_size, len(PROMPTS) - s) for s in range(0, len(PROMPTS), batch_size)
        ]
        assert torch.equal(torch.cat([b[pixels] for b in batches]), whole[pixels])
        assert all(b["attention_mask"][:, -1].all() for b in batches)  # left padded
    other_seed = next(modality_batches(processor, PROMPTS, modality, batch_size=8, seed=6))
    assert not torch.equal(other_seed[pixels], whole[pixels])


def test_modality_batches_text_and_device() -> None:
    _, processor = _vlm("idefics3")
    (batch,) = modality_batches(processor, PROMPTS, "text", device="cpu")
    assert set(batch) >= {"input_ids", "attention_mask"} and "pixel_values" not in batch
    assert torch.equal(batch["input_ids"], build_batch(processor, PROMPTS, "text")["input_ids"])


# --------------------------------------------------------------------------- neutral media


def test_neutral_images_are_solid_seeded_and_sized() -> None:
    images = neutral_images(4, (20, 30), seed=7)
    assert len(images) == 4
    for image in images:
        assert image.mode == "RGB" and image.size == (30, 20)  # PIL: (width, height)
        pixels = np.asarray(image)
        assert (pixels == pixels[0, 0]).all()
    colours = [np.asarray(im)[0, 0].tolist() for im in images]
    assert colours == [np.asarray(im)[0, 0].tolist() for im in neutral_images(4, (20, 30), seed=7)]
    assert colours != [np.asarray(im)[0, 0].tolist() for im in neutral_images(4, (20, 30), seed=8)]
    assert len({tuple(c) for c in colours}) > 1
    # Growing the set only appends: image i does not depend on the count.
    assert colours[:2] == [np.asarray(im)[0, 0].tolist() for im in neutral_images(2, (5, 5), seed=7)]
    assert neutral_images(0, (4, 4)) == []


def test_neutral_videos_have_constant_frames_and_one_colour_per_clip() -> None:
    clips = neutral_videos(3, frames=5, size=(12, 16), seed=2)
    assert len(clips) == 3
    for clip in clips:
        assert clip.shape == (5, 12, 16, 3) and clip.dtype == np.uint8
        assert (clip == clip[0, 0, 0]).all()
    again = neutral_videos(3, frames=5, size=(12, 16), seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(clips, again))
    other = neutral_videos(3, frames=5, size=(12, 16), seed=3)
    assert not all(np.array_equal(a, b) for a, b in zip(clips, other))
    assert neutral_videos(1, frames=1, size=(4, 4))[0].shape == (1, 4, 4, 3)
    # Clip i has the colour of image i for the same seed.
    image_colours = [np.asarray(im)[0, 0].tolist() for im in neutral_images(3, (2, 2), seed=2)]
    assert [clip[0, 0, 0].tolist() for clip in clips] == image_colours


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_media_for_matches_native_sizes(family: str) -> None:
    _, processor = _vlm(family)
    height, width = native_image_size(processor)
    assert (height, width) == (32, 32)  # what every tiny VLM is built for
    assert all(im.size == (width, height) for im in media_for("image", 2, processor))
    assert media_for("text", 2, processor) is None
    if supports_video(family):
        clips = media_for("video", 2, processor, video_frames=4)
        assert all(clip.shape[1:3] == native_video_size(processor) for clip in clips)


def test_media_for_rounds_frames_to_the_temporal_patch() -> None:
    _, qwen = _vlm("qwen2_vl")
    assert media_for("video", 1, qwen, video_frames=3)[0].shape[0] == 4  # temporal_patch_size 2
    assert media_for("video", 1, qwen, video_frames=1)[0].shape[0] == 2
    _, onevision = _vlm("llava_onevision")
    assert media_for("video", 1, onevision, video_frames=3)[0].shape[0] == 3
    with pytest.raises(ConfigError, match="video_frames"):
        media_for("video", 1, qwen, video_frames=0)


def test_native_image_size_rules_on_default_processors() -> None:
    from transformers import (
        CLIPImageProcessorPil,
        Gemma3ImageProcessorPil,
        Idefics3ImageProcessorPil,
        LlavaOnevisionImageProcessorPil,
        Qwen2VLImageProcessorPil,
        Qwen2VLVideoProcessor,
    )

    # Pixel budget (Qwen2-VL, patch 14 x merge 2): 448 lies in [56^2, ~1000^2] and on the 28 grid.
    assert native_image_size(Qwen2VLImageProcessorPil()) == (448, 448)
    assert native_video_size(Qwen2VLVideoProcessor()) == (448, 448)
    assert native_image_size(Qwen2VLImageProcessorPil(min_pixels=600 * 600)) == (616, 616)
    assert native_image_size(Qwen2VLImageProcessorPil(max_pixels=100 * 100)) == (84, 84)
    assert native_image_size(Qwen2VLImageProcessorPil(), preferred_side=224) == (224, 224)
    # Idefics3 / SmolVLM tile, CLIP centre crop, height/width sizes.
    assert native_image_size(Idefics3ImageProcessorPil()) == (364, 364)
    assert native_image_size(CLIPImageProcessorPil(crop_size={"height": 336, "width": 336})) == (336, 336)
    assert native_image_size(Gemma3ImageProcessorPil(size={"height": 40, "width": 60})) == (40, 60)
    assert native_image_size(LlavaOnevisionImageProcessorPil()) == (384, 384)
    # Nothing known: 224 x 224.
    assert native_image_size(object()) == DEFAULT_IMAGE_SIZE == (224, 224)


# --------------------------------------------------------------------------- errors


def test_unknown_modality_suggests_the_nearest() -> None:
    _, processor = _vlm("llava")
    with pytest.raises(ConfigError, match="Did you mean 'image'"):
        build_batch(processor, PROMPTS, "imgae", neutral_images(3, (32, 32)))
    with pytest.raises(ConfigError, match="Did you mean 'video'"):
        media_for("vidoe", 2, processor)
    assert MODALITIES == ("text", "image", "video")


def test_unsupported_modality_names_the_supported_ones() -> None:
    _, processor = _vlm("llava")
    with pytest.raises(ConfigError, match="supports text, image"):
        build_batch(processor, PROMPTS, "video", neutral_videos(3, 2, (32, 32)))
    with pytest.raises(ConfigError, match="supports text, image"):
        modality_batches(processor, PROMPTS, "video")


def test_media_count_and_presence_are_checked() -> None:
    _, processor = _vlm("qwen2_vl")
    with pytest.raises(DataError, match="2 images for 3 prompts"):
        build_batch(processor, PROMPTS, "image", neutral_images(2, (32, 32)))
    with pytest.raises(DataError, match="one video per prompt"):
        build_batch(processor, PROMPTS, "video")
    with pytest.raises(DataError, match="takes no media"):
        build_batch(processor, PROMPTS, "text", neutral_images(3, (32, 32)))


def test_bad_prompts_and_options_are_refused() -> None:
    _, processor = _vlm("gemma3")
    with pytest.raises(DataError, match="empty"):
        build_batch(processor, [], "image", [])
    with pytest.raises(DataError, match="empty"):
        modality_batches(processor, [], "text")  # eager: before the first batch is asked for
    with pytest.raises(DataError, match="single string"):
        build_batch(processor, "Hi", "text")
    with pytest.raises(ConfigError, match="padding_side"):
        build_batch(processor, PROMPTS, "text", padding_side="middle")
    with pytest.raises(ConfigError, match="batch_size"):
        modality_batches(processor, PROMPTS, "text", batch_size=0)
    with pytest.raises(ConfigError, match="frames"):
        neutral_videos(1, 0, (4, 4))
    with pytest.raises(ConfigError, match="height, width"):
        neutral_images(1, (4, 0))
    with pytest.raises(ConfigError, match="count"):
        neutral_images(-1, (4, 4))
