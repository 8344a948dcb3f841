"""A SmolVLM-shaped model with the real SmolLM2 text weights, for testing multimodal mechanics offline.

`build_smolvlm_shaped` assembles a SmolVLM-256M-shaped vision-language model from the real
SmolLM2 text weights and a small random vision tower: a real language backbone that receives
a genuine modality offset from image tokens.
"""

from __future__ import annotations

import importlib.util
import pathlib
import shutil
from typing import TYPE_CHECKING, Any

import torch

from steerpeft.errors import SteerpeftError
from steerpeft.models.base import finish, resolve_dtype, set_model_id
from steerpeft.models.cache import build_cached_folder, read_marker
from steerpeft.models.embedded import EMBEDDED_MODEL_ID, _drop_loading_details, _smollm2_folder

if TYPE_CHECKING:
    from transformers import Idefics3ForConditionalGeneration, Idefics3Processor

SMOLVLM_SHAPED_MODELS = {"smolvlm-shaped": False, "smolvlm2-shaped": True}
"""Names `load_model` builds offline with `build_smolvlm_shaped` (value: with video)."""

# Bump when what a cached folder holds changes, to force a rebuild.
_SMOLVLM_FORMAT = 1

# The SmolLM2 chat template (ChatML with its default system prompt), extended so that message
# contents may also be lists of {"type": "text" | "image" | "video"} parts.  Text-only
# conversations render exactly as SmolLM2's own template renders them.
SMOLVLM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'video' %}{{ '<video>' }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Named multimodal tokens the Idefics3/SmolVLM processors read from the tokenizer.
SMOLVLM_NAMED_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "end_of_utterance_token": "<end_of_utterance>",
    "global_image_token": "<global-img>",
    "video_token": "<video>",
}
SMOLVLM_GRID_TOKENS = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]

# Sizes of the SmolVLM-shaped model's small random vision side.  A 64 px tile is cut into 8 px
# patches (64 of them); pixel shuffle with scale factor 2 merges them into 16 image tokens.
# Images are resized to a 128 px longest edge and split into 64 px tiles plus one global
# view, as real SmolVLM does at larger sizes: a square image costs 5 x 16 = 80 image tokens,
# a video frame (never split) 16.
SMOLVLM_TILE = 64
SMOLVLM_PATCH = 8
SMOLVLM_SCALE_FACTOR = 2
SMOLVLM_IMAGE_EDGE = 128
SMOLVLM_IMAGE_SEQ_LEN = (SMOLVLM_TILE // SMOLVLM_PATCH) ** 2 // SMOLVLM_SCALE_FACTOR**2
SMOLVLM_VIDEO_FRAMES = 8



def smolvlm_shaped_id(seed: int = 0, video: bool = False) -> str:
    """The `model_id` of `build_smolvlm_shaped(seed=seed, video=video)`."""
    base = "smolvlm2-video-shaped" if video else "smolvlm-shaped"
    return f"{base}-seed{seed} (text: {EMBEDDED_MODEL_ID}; vision: random)"


def _smolvlm_tokenizer(folder: pathlib.Path) -> Any:
    """SmolLM2's tokenizer plus the Idefics3/SmolVLM image and video tokens, as named attributes."""
    from transformers import AddedToken, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_smollm2_folder())
    new_tokens = [*SMOLVLM_NAMED_TOKENS.values(), *SMOLVLM_GRID_TOKENS]
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in new_tokens], special_tokens=True
    )
    tokenizer.pad_token = "<|im_end|>"
    tokenizer.padding_side = "left"
    tokenizer.chat_template = SMOLVLM_CHAT_TEMPLATE
    _drop_loading_details(tokenizer)
    staging = folder / "tokenizer-staging"
    tokenizer.save_pretrained(staging)
    # Reloading with a dict of named tokens gives `tokenizer.image_token`, `.image_token_id`, ...
    tokenizer = AutoTokenizer.from_pretrained(staging, extra_special_tokens=dict(SMOLVLM_NAMED_TOKENS))
    _drop_loading_details(tokenizer)
    shutil.rmtree(staging)
    return tokenizer


def _build_smolvlm(folder: pathlib.Path, seed: int, video: bool) -> None:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    smollm2_folder = _smollm2_folder()
    text = LlamaForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32)
    tokenizer = _smolvlm_tokenizer(folder)
    old_vocab = text.config.vocab_size

    text_settings = text.config.to_dict()
    for key in ("_name_or_path", "architectures", "dtype", "transformers_version"):
        text_settings.pop(key, None)
    text_settings["vocab_size"] = len(tokenizer)
    text_settings["pad_token_id"] = tokenizer.pad_token_id
    vision_settings = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": SMOLVLM_TILE,
        "patch_size": SMOLVLM_PATCH,
    }
    top = {
        "scale_factor": SMOLVLM_SCALE_FACTOR,
        "image_token_id": tokenizer.image_token_id,
        "tie_word_embeddings": True,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if video:
        from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMVisionConfig

        config = SmolVLMConfig(
            text_config=LlamaConfig(**text_settings),
            vision_config=SmolVLMVisionConfig(**vision_settings),
            **top,
        )
        model_class: Any = SmolVLMForConditionalGeneration
    else:
        config = Idefics3Config(
            text_config=LlamaConfig(**text_settings),
            vision_config=Idefics3VisionConfig(**vision_settings),
            **top,
        )
        model_class = Idefics3ForConditionalGeneration

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
        # Position embeddings drawn at unit scale (the 0.02 default leaves flat images' patch
        # features ruled by their colour): image tokens then share a large, consistent offset
        # from text, with a mild dependence on content, as a trained encoder's tokens do.
        torch.nn.init.normal_(model.model.vision_model.embeddings.position_embedding.weight, std=1.0)
    # Real text weights; the added token rows start at the mean embedding (a neutral token).
    state = text.model.state_dict()
    embeddings = state["embed_tokens.weight"]
    extra = embeddings.mean(dim=0, keepdim=True).expand(len(tokenizer) - old_vocab, -1)
    state["embed_tokens.weight"] = torch.cat([embeddings, extra], dim=0)
    model.model.text_model.load_state_dict(state, strict=True)
    if model.lm_head.weight.data_ptr() != model.model.text_model.embed_tokens.weight.data_ptr():
        model.lm_head.weight.data.copy_(state["embed_tokens.weight"])
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = text.config.bos_token_id
    model.save_pretrained(folder)

    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": SMOLVLM_IMAGE_EDGE}, max_image_size={"longest_edge": SMOLVLM_TILE}
    )
    if video:
        from transformers import SmolVLMProcessor, SmolVLMVideoProcessor

        video_processor = SmolVLMVideoProcessor(
            size={"longest_edge": SMOLVLM_TILE},
            max_image_size={"longest_edge": SMOLVLM_TILE},
            num_frames=SMOLVLM_VIDEO_FRAMES,
            fps=1,
        )
        processor: Any = SmolVLMProcessor(
            image_processor,
            tokenizer,
            video_processor,
            image_seq_len=SMOLVLM_IMAGE_SEQ_LEN,
            chat_template=SMOLVLM_CHAT_TEMPLATE,
        )
    else:
        processor = Idefics3Processor(
            image_processor,
            tokenizer,
            image_seq_len=SMOLVLM_IMAGE_SEQ_LEN,
            chat_template=SMOLVLM_CHAT_TEMPLATE,
        )
    processor.save_pretrained(folder)


def build_smolvlm_shaped(
    dtype: str | torch.dtype = torch.float32,
    seed: int = 0,
    *,
    video: bool = False,
    device: str | torch.device | None = None,
) -> tuple[Idefics3ForConditionalGeneration, Idefics3Processor]:
    """A SmolVLM-256M-shaped model: real SmolLM2-135M-Instruct text weights, small random vision side.

    Not a real VLM (the vision tower and connector are random, seeded by `seed`), but a real
    language backbone that receives a genuine modality offset from image tokens.  Text-only
    inputs give exactly SmolLM2's logits over SmolLM2's vocabulary.

    Shape: SmolLM2's text config (576 hidden, 30 layers, 9/3 heads) with the 46 added tokens
    (`<image>`, `<fake_token_around_image>`, `<global-img>`, `<end_of_utterance>`, `<video>`,
    `<row_i_col_j>`) starting at the mean embedding; a 2-layer, 64-wide vision tower on 64 px
    tiles with 8 px patches; 16 image tokens per tile (see `SMOLVLM_IMAGE_SEQ_LEN`).  Decoder
    layers: `model.model.text_model.layers`.  The chat template is SmolLM2's ChatML, also
    rendering {"type": "image"} / {"type": "video"} parts.

    `video=False` (SmolVLM-256M layout): `Idefics3ForConditionalGeneration` + `Idefics3Processor`,
    images only.  `video=True` (SmolVLM2 layout, same weights): `SmolVLMForConditionalGeneration`
    + `SmolVLMProcessor` with `SmolVLMVideoProcessor` (8 frames of 64 px, never split); it needs
    torchvision and num2words.  Note: `SmolVLMProcessor.apply_chat_template` swaps in its own
    non-ChatML template for conversations containing a video unless `chat_template=` is passed
    explicitly (`processor.chat_template`).

    `device`: as in `load_model` (None: the first CUDA GPU if any, else the CPU).
    Built once per (seed, video) into `cache_dir()` (a few seconds once the SmolLM2 cache
    exists), stored as float32 and cast to `dtype` on load.
    """
    torch_dtype = resolve_dtype(dtype)
    if video:
        _check_video_dependencies()
    name = f"smolvlm2-video-shaped-seed{seed}" if video else f"smolvlm-shaped-seed{seed}"
    marker = {
        "format": _SMOLVLM_FORMAT,
        "source": smolvlm_shaped_id(seed, video),
        "text_weights": read_marker(_smollm2_folder()) or {},
    }
    folder = build_cached_folder(name, marker, lambda tmp: _build_smolvlm(tmp, seed, video))
    if video:
        from transformers import SmolVLMForConditionalGeneration as model_class
        from transformers import SmolVLMProcessor as processor_class
    else:
        from transformers import Idefics3ForConditionalGeneration as model_class  # type: ignore[assignment]
        from transformers import Idefics3Processor as processor_class  # type: ignore[assignment]
    model = model_class.from_pretrained(folder, dtype=torch_dtype)
    processor = processor_class.from_pretrained(folder)
    set_model_id(model, processor, smolvlm_shaped_id(seed, video))
    return finish(model, processor, device)


def _check_video_dependencies() -> None:
    missing = [pkg for pkg in ("torchvision", "num2words") if importlib.util.find_spec(pkg) is None]
    if missing:
        raise SteerpeftError(
            f"Video needs {' and '.join(missing)} (SmolVLM's video processor imports torchvision; its "
            f"processor writes frame counts with num2words). Install with: pip install {' '.join(missing)}  "
            "(torchvision must match your torch version)."
        )
