"""`load_model`: one entry point for the embedded default, offline test models and any Hub or local model.

Names other than the built-in ones go through the ordinary `from_pretrained` path (Hub id or
local folder), so real models load exactly as users expect.
"""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING, Any

import torch

from steerpeft.errors import ConfigError, SteerpeftError
from steerpeft.models.base import finish, resolve_dtype, set_model_id, set_provenance
from steerpeft.models.embedded import DEFAULT_MODEL, LEGACY_EMBEDDED_MODEL_IDS, load_smollm2
from steerpeft.models.gguf import gguf_folder, is_gguf_path, read_provenance
from steerpeft.models.qwen_vl_shaped import is_qwen_vl_shaped_name, load_qwen_vl_shaped
from steerpeft.models.smolvlm_shaped import SMOLVLM_SHAPED_MODELS, build_smolvlm_shaped

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def _not_found(name: str, exc: BaseException) -> SteerpeftError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SteerpeftError(
        f"Model {name!r} could not be found locally or on the Hugging Face Hub ({detail}). Check the "
        "name and the network; offline runs (no network, HF_HUB_OFFLINE=1) need a local folder path "
        f"or the embedded default {DEFAULT_MODEL!r}."
    )


def _load_pretrained(
    name: str, torch_dtype: torch.dtype | str, revision: str | None, trust_remote_code: bool
) -> tuple[Any, Any]:
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    local = pathlib.Path(name).expanduser()
    if local.exists():
        name = str(local.resolve())  # a stable id, whatever the working directory
    elif name.startswith((".", "/", "~", "\\")) or os.path.isabs(name):
        raise SteerpeftError(f"No model folder at {name!r}: the path does not exist.")
    options: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(name, **options)
    except OSError as exc:
        raise _not_found(name, exc) from exc
    except ValueError as exc:
        raise SteerpeftError(f"{name!r} is not a model transformers can load: {exc}") from exc
    # A vision tower in the config means a vision-language model with a multimodal processor.
    multimodal = getattr(config, "vision_config", None) is not None
    model_class = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    processor_class = AutoProcessor if multimodal else AutoTokenizer
    try:
        model = model_class.from_pretrained(name, config=config, dtype=torch_dtype, **options)
        processor = processor_class.from_pretrained(name, **options)
    except OSError as exc:
        raise _not_found(name, exc) from exc
    return model, processor


def load_model(
    name: str | os.PathLike[str] | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, Any]:
    """(model, tokenizer_or_processor) in eval mode.

    `name`: None or `DEFAULT_MODEL` for the embedded SmolLM2 default (its Hub id,
    `EMBEDDED_MODEL_ID`, loads the Hub's own weights, not the embedded Q4_1 ones); a local
    `.gguf` file, converted once into a cached float32 folder (its model id is the file's path);
    "smolvlm-shaped" / "smolvlm2-shaped" for the offline test VLMs of `build_smolvlm_shaped`
    (images; images and video); "qwen2.5-vl-shaped:/path/to/qwen2-text-model" (a .gguf file or a
    folder) for `build_qwen_vl_shaped`: that Qwen2 text model's real weights in a Qwen2.5-VL layout
    with a small random vision tower; otherwise a Hub id or a local folder (a str or a path), loaded with
    `from_pretrained`.  A config with a `vision_config` loads with `AutoModelForImageTextToText` and
    `AutoProcessor`, anything else with `AutoModelForCausalLM` and `AutoTokenizer`.  Tokenizers pad on the
    left and fall back to the eos token as pad token.

    `dtype`: "float32", "bfloat16", "float16", "auto" (as stored) or a torch dtype.
    `device`: where to put the model; None means the first CUDA GPU if any, else the CPU.
    `revision` and `trust_remote_code` pass through to `from_pretrained` (the embedded model
    has neither: asking for a revision of it is an error).
    """
    torch_dtype = resolve_dtype(dtype)
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if name is None or name in (DEFAULT_MODEL, *LEGACY_EMBEDDED_MODEL_IDS):
        if revision is not None:
            raise ConfigError(
                f"The embedded default model has no revisions (got revision={revision!r}); "
                "leave revision unset, or name a Hub model."
            )
        return load_smollm2(dtype=torch_dtype, device=device)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"Model name must be a non-empty string, got {name!r}.")
    if name in SMOLVLM_SHAPED_MODELS:
        if revision is not None:
            raise ConfigError(f"{name!r} is built locally and has no revisions; leave revision unset.")
        return build_smolvlm_shaped(torch_dtype, video=SMOLVLM_SHAPED_MODELS[name], device=device)
    if is_qwen_vl_shaped_name(name):  # before the .gguf check: the name may end in .gguf
        if revision is not None:
            raise ConfigError(f"{name!r} is built locally and has no revisions; leave revision unset.")
        return load_qwen_vl_shaped(name, torch_dtype, device=device)
    if is_gguf_path(name):
        return _load_gguf(name, torch_dtype, revision, device)
    model, processor = _load_pretrained(name, torch_dtype, revision, trust_remote_code)
    return finish(model, processor, device)


def _load_gguf(name: str, torch_dtype: torch.dtype | str, revision: str | None,
               device: str | torch.device | None) -> tuple[Any, Any]:
    """A local GGUF file through its cached float32 folder, keeping the file as the model's id."""
    if revision is not None:
        raise ConfigError(f"{name!r} is a local GGUF file and has no revisions; leave revision unset.")
    folder = gguf_folder(name)
    model, processor = _load_pretrained(str(folder), torch_dtype, None, False)
    set_model_id(model, processor, str(pathlib.Path(name).expanduser().resolve()))
    set_provenance(model, read_provenance(folder))
    return finish(model, processor, device)

