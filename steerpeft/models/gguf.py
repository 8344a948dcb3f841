"""Local GGUF files as plain float32 Hugging Face folders, converted once and cached.

transformers reads a GGUF by dequantizing every tensor, about 30 s even for a small model, and
a GGUF-loaded model refuses `save_pretrained`.  So the first load moves the weights into a plain
model of the same class, saves it with its tokenizer under `cache_dir()`, and later loads read
that folder in a second or two.  The folder records where the weights came from (the file and
its quantization), which plans and adapters keep as provenance.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import time
from typing import Any

import torch

from steerpeft.errors import SteerpeftError
from steerpeft.models.cache import build_cached_folder

logger = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
PROVENANCE_FILE = "steerpeft-provenance.json"
"""Written into a converted folder: the GGUF file name and its quantization."""
_GGUF_FORMAT = 1
_DROPPED_CONFIG_KEYS = (
    "quantization_config", "_name_or_path", "_model_name_or_path", "architectures", "dtype",
)


def is_gguf_path(name: str) -> bool:
    return name.lower().endswith(GGUF_SUFFIX)


def gguf_quantization(gguf: pathlib.Path) -> str:
    """The file's quantization as llama.cpp names it (e.g. "Q4_1"), or "unknown"."""
    try:
        from gguf import GGUFReader, LlamaFileType

        field = GGUFReader(str(gguf)).fields.get("general.file_type")
        if field is None:
            return "unknown"
        return LlamaFileType(int(field.parts[field.data[0]][0])).name.removeprefix("MOSTLY_")
    except (ImportError, ValueError, KeyError, IndexError, OSError):
        return "unknown"


def drop_loading_details(tokenizer: Any) -> None:
    """Forget how a tokenizer was loaded (local-only, GGUF), so its saved config stays portable."""
    for key in ("is_local", "local_files_only", "gguf_file"):
        tokenizer.init_kwargs.pop(key, None)


def convert_gguf(gguf: pathlib.Path, folder: pathlib.Path, *, pad_token: str | None = None,
                 end_token: str | None = None, source: str | None = None,
                 require_chat_template: bool = False) -> None:
    """Dequantize `gguf` once into `folder`: a plain float32 model of the same class and its tokenizer.

    `pad_token`: the tokenizer's pad token (default: its own, else its end token); generation
    stops at `end_token` (default: the GGUF's end token).  `source` names the file in the provenance record.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        raise SteerpeftError(
            f"{gguf} could not be read as a GGUF model by transformers ({exc}). Check that the file is "
            "complete and that its architecture is one transformers reads from GGUF (Llama, Qwen2, Gemma, "
            "Mistral, ...)."
        ) from exc
    settings = gguf_model.config.to_dict()
    for key in _DROPPED_CONFIG_KEYS:
        settings.pop(key, None)
    config = type(gguf_model.config).from_dict(settings)
    config.dtype = torch.float32
    state = gguf_model.state_dict()
    model_class = type(gguf_model)
    del gguf_model
    model = model_class(config)
    model.load_state_dict(state, strict=True)
    pad = pad_token or tokenizer.pad_token or tokenizer.eos_token
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = (
        tokenizer.convert_tokens_to_ids(end_token) if end_token else tokenizer.eos_token_id
    )
    model.generation_config.pad_token_id = tokenizer.convert_tokens_to_ids(pad) if pad else None
    model.save_pretrained(folder)

    if pad:
        tokenizer.pad_token = pad
    tokenizer.padding_side = "left"
    tokenizer.model_max_length = getattr(config, "max_position_embeddings", tokenizer.model_max_length)
    drop_loading_details(tokenizer)
    if not tokenizer.chat_template and require_chat_template:
        raise SteerpeftError(f"{gguf} carries no chat template: the file looks damaged; download it again.")
    if not tokenizer.chat_template:
        logger.warning("%s carries no chat template: prompts will be encoded as plain text.", gguf.name)
    tokenizer.save_pretrained(folder)
    provenance = {
        "source_file": source or gguf.name,
        "quantization": f"{gguf_quantization(gguf)}, dequantized to float32",
    }
    (folder / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    logger.info("Converted %s in %.1f s into %s", gguf.name, time.perf_counter() - start, folder)


def read_provenance(folder: str | pathlib.Path) -> dict[str, str]:
    """The provenance record of a converted folder, {} for any other folder."""
    try:
        record = json.loads((pathlib.Path(folder) / PROVENANCE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in record.items()} if isinstance(record, dict) else {}


def gguf_folder(path: str | pathlib.Path) -> pathlib.Path:
    """The cached float32 folder of a local GGUF file, converting it on first use.

    The cache entry is keyed by the file's absolute path, size and modification time, so an
    edited or replaced file is converted again.
    """
    gguf = pathlib.Path(path).expanduser()
    if not gguf.is_file():
        raise SteerpeftError(f"No GGUF file at {str(path)!r}: the path does not exist or is not a file.")
    gguf = gguf.resolve()
    stat = gguf.stat()
    marker = {
        "format": _GGUF_FORMAT, "source": str(gguf), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
    }
    digest = hashlib.sha256(json.dumps(marker, sort_keys=True).encode()).hexdigest()[:12]
    name = f"gguf-{gguf.stem.lower()}-{digest}"

    def build(folder: pathlib.Path) -> None:
        logger.warning("Converting %s into a float32 folder under the steerpeft cache (once).", gguf.name)
        convert_gguf(gguf, folder)

    return build_cached_folder(name, marker, build)
