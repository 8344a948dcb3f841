"""A Qwen2.5-VL-shaped model whose language model carries the real weights of a local Qwen2 text model.

`build_qwen_vl_shaped(text_model)` takes a Qwen2 text model the user names (a local `.gguf` file,
read through the cached float32 conversion of `steerpeft.models.gguf`, or a Hugging Face folder)
and puts its weights, unchanged, into the language model of a `Qwen2_5_VLForConditionalGeneration`
whose vision tower is small and random (seeded).  Images and videos go through the real Qwen-VL
processor classes.  `load_model("qwen2.5-vl-shaped:/path/to/text-model")` builds it by name.

Not a real VLM: the vision side has never seen an image.  But the language backbone is real and
receives a genuine modality offset from image and video tokens, and text-only inputs give exactly
the text model's logits (text-only M-RoPE positions are plain RoPE positions).

Why Qwen2.5-VL rather than Qwen2-VL: the Qwen2.5 text models (Qwen2.5-Instruct, Qwen2.5-Coder)
are the language models Qwen2.5-VL is built on; and its vision blocks carry `mlp.down_proj`
modules like the decoder layers, the case exact-path layer matching must get right.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import pathlib
import re
import time
from typing import TYPE_CHECKING, Any

import torch

from steerpeft.errors import ConfigError, SteerpeftError
from steerpeft.models.base import finish, resolve_dtype, set_model_id, set_provenance
from steerpeft.models.cache import build_cached_folder, read_marker
from steerpeft.models.gguf import gguf_folder, is_gguf_path, read_provenance
from steerpeft.models.gguf_header import gguf_architecture
from steerpeft.models.qwen_vl_parts import (
    qwen_vl_config,
    qwen_vl_processor,
    qwen_vl_tokenizer,
)

if TYPE_CHECKING:
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

logger = logging.getLogger(__name__)

QWEN_VL_SHAPED_PREFIX = "qwen2.5-vl-shaped"
"""`load_model(f"{QWEN_VL_SHAPED_PREFIX}:{path}")` builds the model on the Qwen2 text model at `path`
(`f"{QWEN_VL_SHAPED_PREFIX}-seed{n}:{path}"` for another vision seed than 0)."""
_NAME = re.compile(rf"^{re.escape(QWEN_VL_SHAPED_PREFIX)}(?:-seed(\d+))?:(.+)$", re.DOTALL)
# Names that look meant for this builder but are not spelled right (qwen2-vl-shaped, missing path, ...).
_NEAR_NAME = re.compile(r"^qwen[\w.]*-vl-shaped", re.IGNORECASE)

# Bump when what a cached folder holds changes, to force a rebuild.
_QWEN_VL_FORMAT = 1

TEXT_MODEL_TYPE = "qwen2"
"""The only text architecture accepted: Qwen2.5-VL's language model is a Qwen2 decoder."""


# The small random vision tower.  Patch 14, merge 2 and temporal patch 2 as the real model; 2 blocks
# of width 128 (block 0 windowed, block 1 full attention, like the real tower's pattern), and a
# projector to the text hidden size.  Images are held to at most 168 x 168 pixels (6 x 6 = 36
# image tokens for a square), video frames to 112 x 112 (4 x 4 = 16 tokens per 2 frames).
QWEN_VL_VISION = {
    "depth": 2,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_heads": 4,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "tokens_per_second": 2,
    "window_size": 112,
    "fullatt_block_indexes": [1],
}


# --------------------------------------------------------------------------- names


def is_qwen_vl_shaped_name(name: str) -> bool:
    """True for names `load_model` hands to this builder (also misspelt ones, to explain the syntax).

    An existing local path is never taken for such a name, however it is spelt.
    """
    return bool(_NEAR_NAME.match(name.strip())) and not pathlib.Path(name).expanduser().exists()


def parse_qwen_vl_shaped_name(name: str) -> tuple[str, int]:
    """(text model path, vision seed) from `qwen2.5-vl-shaped[-seedN]:/path/to/text-model`."""
    match = _NAME.match(name.strip())
    if match is None or not match.group(2).strip():
        raise ConfigError(
            f"Model name {name!r} is not understood. Name the Qwen2 text model whose weights the "
            "Qwen2.5-VL-shaped model carries: "
            f"'{QWEN_VL_SHAPED_PREFIX}:/path/to/qwen2.5-coder-0.5b-instruct.gguf' (a local .gguf file or "
            f"Hugging Face folder; '{QWEN_VL_SHAPED_PREFIX}-seed1:...' for another random vision tower)."
        )
    return match.group(2).strip(), int(match.group(1) or 0)


def qwen_vl_shaped_id(text_path: str | pathlib.Path, seed: int = 0) -> str:
    """The model id of the built model: the name that loads it again (the text model's absolute path)."""
    path = pathlib.Path(text_path).expanduser().resolve()
    prefix = QWEN_VL_SHAPED_PREFIX if seed == 0 else f"{QWEN_VL_SHAPED_PREFIX}-seed{seed}"
    return f"{prefix}:{path}"


# --------------------------------------------------------------------------- the text model


def _folder_model_type(folder: pathlib.Path) -> str | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("model_type") if isinstance(config, dict) else None


def _not_qwen2(path: pathlib.Path, found: str | None) -> SteerpeftError:
    what = f"a {found!r} model" if found else "not a model whose architecture could be read"
    return SteerpeftError(
        f"{path} is {what}, but the Qwen2.5-VL-shaped model needs a Qwen2 text model (model type "
        f"{TEXT_MODEL_TYPE!r}: Qwen2 / Qwen2.5 / Qwen2.5-Coder, e.g. qwen2.5-coder-0.5b-instruct.gguf)."
    )


def _text_folder(text_path: str) -> tuple[pathlib.Path, dict[str, Any], dict[str, str]]:
    """(HF folder of the text weights, its identity for the cache key, its provenance record).

    A `.gguf` file is checked to be Qwen2 from its header before the (cached) float32 conversion.
    """
    path = pathlib.Path(text_path).expanduser()
    if not path.exists():
        raise SteerpeftError(
            f"No text model at {text_path!r}: the path does not exist. Name a local Qwen2 text model, "
            f"e.g. '{QWEN_VL_SHAPED_PREFIX}:/path/to/qwen2.5-coder-0.5b-instruct.gguf' or a Hugging Face "
            "folder."
        )
    path = path.resolve()
    if path.is_file():
        if not is_gguf_path(path.name):
            raise SteerpeftError(
                f"{path} is a file but not a .gguf file: name a GGUF file or a Hugging Face model folder."
            )
        architecture = gguf_architecture(path)
        if architecture != TEXT_MODEL_TYPE:
            raise _not_qwen2(path, architecture)
        folder = gguf_folder(path)
        provenance = read_provenance(folder)
        return folder, read_marker(folder) or {"source": str(path)}, {
            "source_file": str(path),
            "quantization": provenance.get("quantization", "unknown"),
        }
    model_type = _folder_model_type(path)
    if model_type != TEXT_MODEL_TYPE:
        raise _not_qwen2(path, model_type)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".bin"))
    identity = {
        "source": str(path),
        "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files},
    }
    return path, identity, {"source_file": str(path), "quantization": "as stored in the folder"}


# --------------------------------------------------------------------------- building


def _build_qwen_vl(folder: pathlib.Path, text_folder: pathlib.Path, seed: int) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2ForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    start = time.perf_counter()
    text = Qwen2ForCausalLM.from_pretrained(text_folder, dtype=torch.float32)
    tokenizer = qwen_vl_tokenizer(text_folder)
    config = qwen_vl_config(text.config.to_dict(), QWEN_VL_VISION, tokenizer,
                            tie_word_embeddings=bool(text.config.tie_word_embeddings))
    vision = config.vision_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(vision, dtype=torch.float32)
        # The projector's output bias drawn at unit scale (the default is zero, which leaves the image
        # tokens of flat neutral media ruled by their colour): image and video tokens then share a
        # large, consistent offset from text, with a mild dependence on content, as a trained
        # encoder's tokens do.
        torch.nn.init.normal_(tower.merger.mlp[-1].bias, std=1.0)
    with no_init_weights():  # every weight is overwritten below: skip initialising 0.5 B of them
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.model.visual.load_state_dict(tower.state_dict(), strict=True)
    model.model.language_model.load_state_dict(text.model.state_dict(), strict=True)
    model.lm_head.load_state_dict(text.lm_head.state_dict(), strict=True)
    generation = text.generation_config
    model.generation_config.bos_token_id = generation.bos_token_id
    model.generation_config.eos_token_id = generation.eos_token_id
    model.generation_config.pad_token_id = (
        generation.pad_token_id if generation.pad_token_id is not None else tokenizer.pad_token_id
    )
    model.save_pretrained(folder)
    qwen_vl_processor(tokenizer, vision).save_pretrained(folder)
    logger.info("Built the Qwen2.5-VL-shaped model on %s in %.1f s", text_folder, time.perf_counter() - start)


def build_qwen_vl_shaped(
    text_model: str | pathlib.Path,
    dtype: str | torch.dtype = torch.float32,
    seed: int = 0,
    *,
    device: str | torch.device | None = None,
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """A Qwen2.5-VL-shaped model: the real weights of the Qwen2 text model `text_model`, a small random vision
    tower.

    `text_model`: a local `.gguf` file (converted once into a cached float32 folder, see
    `steerpeft.models.gguf.gguf_folder`) or a Hugging Face folder of a `qwen2` model (Qwen2,
    Qwen2.5, Qwen2.5-Coder).  Anything else is refused with a clear error.

    Shape: the text model's config as `Qwen2_5_VLTextConfig` (M-RoPE sections 2:3:3 of the rotary
    half-dimension) with its weights loaded unchanged, lm head included (tied or not, as in the
    text model); a 2-block, 128-wide vision tower (patch 14, spatial merge 2, temporal patch 2,
    block 0 windowed, block 1 full attention) whose projector outputs the text hidden size, drawn
    from `seed`.  Decoder layers: `model.model.language_model.layers`.  Processor:
    `Qwen2_5_VLProcessor` with `Qwen2VLImageProcessorPil` (at most 168 x 168 pixels: 36 image
    tokens for a square image) and `Qwen2VLVideoProcessor` (at most 112 x 112 pixels per frame: 16
    tokens per 2 frames).  The chat template is the text model's own, run after a prefix that
    renders {"type": "image"} / {"type": "video"} parts as `<|vision_start|><|image_pad|><|vision_end|>`
    / `...<|video_pad|>...`: text-only conversations render exactly as with the text model.

    Text-only inputs give exactly the text model's logits.  Video needs torchvision (every
    transformers video processor imports it).  `device`: as in `load_model`.  Built once per
    (text model, seed) into `cache_dir()` (a few seconds once the text model's float32 folder
    exists), stored as float32 and cast to `dtype` on load.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an int >= 0, got {seed!r}.")
    torch_dtype = resolve_dtype(dtype)
    _check_video_dependencies()
    text_folder, identity, text_provenance = _text_folder(str(text_model))
    model_name = qwen_vl_shaped_id(text_provenance["source_file"], seed)
    marker = {"format": _QWEN_VL_FORMAT, "source": model_name, "seed": seed, "text_weights": identity}
    digest = hashlib.sha256(json.dumps(marker, sort_keys=True).encode()).hexdigest()[:12]
    stem = re.sub(r"[^a-z0-9.]+", "-", pathlib.Path(text_provenance["source_file"]).stem.lower()).strip("-")
    name = f"{QWEN_VL_SHAPED_PREFIX}-{stem}-seed{seed}-{digest}"
    folder = build_cached_folder(name, marker, lambda tmp: _build_qwen_vl(tmp, text_folder, seed))

    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch_dtype)
    processor = Qwen2_5_VLProcessor.from_pretrained(folder)
    set_model_id(model, processor, model_name)
    set_provenance(
        model,
        {
            "source_file": f"{text_provenance['source_file']} (text weights)",
            "quantization": f"text: {text_provenance['quantization']}",
            "vision_tower": f"random, seed {seed} (not trained): {_describe_vision()}",
        },
    )
    return finish(model, processor, device)


def load_qwen_vl_shaped(
    name: str, dtype: str | torch.dtype = torch.float32, device: str | torch.device | None = None
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """`build_qwen_vl_shaped` from a `load_model` name (`qwen2.5-vl-shaped[-seedN]:/path`)."""
    text_path, seed = parse_qwen_vl_shaped_name(name)
    return build_qwen_vl_shaped(text_path, dtype, seed, device=device)


def _describe_vision() -> str:
    v = QWEN_VL_VISION
    return (f"Qwen2.5-VL vision tower, {v['depth']} blocks of width {v['hidden_size']}, patch "
            f"{v['patch_size']}, merge {v['spatial_merge_size']}")


def _check_video_dependencies() -> None:
    if importlib.util.find_spec("torchvision") is None:
        raise SteerpeftError(
            "The Qwen2.5-VL-shaped model needs torchvision: its processor holds a Qwen2-VL video processor, "
            "and every transformers video processor imports torchvision. Install it with: pip install "
            "torchvision  (it must match your torch version)."
        )
