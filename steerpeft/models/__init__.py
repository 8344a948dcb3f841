"""Loading models: the embedded SmolLM2 default, any Hub or local model, offline test VLMs.

One contract for every source: `(model, tokenizer_or_processor)` in eval mode.

- `loading`: `load_model`, the one entry point (names, folders, Hub ids);
- `embedded`: the SmolLM2-135M-Instruct default, converted once from its GGUF;
- `smolvlm_shaped`: a SmolVLM-shaped VLM with the real SmolLM2 text weights;
- `qwen_vl_shaped`: a Qwen2.5-VL-shaped VLM with the real weights of a local Qwen2 text model;
- `cache`: atomic cache folders; `base`: dtypes, devices, provenance id, finishing steps.
"""

from steerpeft.models.base import DTYPES, model_id, resolve_device, resolve_dtype
from steerpeft.models.cache import CACHE_MARKER, build_cached_folder, cache_dir
from steerpeft.models.embedded import (  # noqa: F401
    DEFAULT_MODEL,
    EMBEDDED_MODEL_ID,
    EMBEDDED_PROVENANCE,
    LEGACY_EMBEDDED_MODEL_IDS,
    _smollm2_folder,
    load_smollm2,
)
from steerpeft.models.gguf import gguf_folder
from steerpeft.models.loading import load_model
from steerpeft.models.qwen_vl_shaped import QWEN_VL_SHAPED_PREFIX, build_qwen_vl_shaped, qwen_vl_shaped_id
from steerpeft.models.smolvlm_shaped import SMOLVLM_SHAPED_MODELS, build_smolvlm_shaped, smolvlm_shaped_id

_build_cached_folder = build_cached_folder  # the name tests and older callers use

__all__ = [
    "CACHE_MARKER",
    "DEFAULT_MODEL",
    "DTYPES",
    "EMBEDDED_MODEL_ID",
    "EMBEDDED_PROVENANCE",
    "LEGACY_EMBEDDED_MODEL_IDS",
    "QWEN_VL_SHAPED_PREFIX",
    "SMOLVLM_SHAPED_MODELS",
    "build_cached_folder",
    "build_qwen_vl_shaped",
    "build_smolvlm_shaped",
    "cache_dir",
    "gguf_folder",
    "load_model",
    "load_smollm2",
    "model_id",
    "qwen_vl_shaped_id",
    "resolve_device",
    "resolve_dtype",
    "smolvlm_shaped_id",
]
