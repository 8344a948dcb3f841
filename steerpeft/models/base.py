"""What every loader shares: dtype and device names, the model's provenance id, the finishing steps.

One contract for every source: `(model, tokenizer_or_processor)` in eval mode, tokenizers
padding on the left with a pad token.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from steerpeft.errors import ConfigError
from steerpeft.registry import suggest

DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",
}
"""dtype names `load_model` accepts ("auto": the dtype stored with the weights)."""


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """A torch dtype (or "auto") from a name in `DTYPES` or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ConfigError(
        f"Unknown dtype {dtype!r}.{suggest(str(dtype), list(DTYPES))} Known: {', '.join(DTYPES)}."
    )


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, or the first CUDA GPU when there is one and `device` is None, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_id(model: Any) -> str:
    """A stable id of the model's weights, for provenance (model cards, adapter checks).

    It is `config._name_or_path`: the Hub id or the absolute local path the model was loaded
    from, `EMBEDDED_MODEL_ID` for the embedded default, or the SmolVLM-shaped model's own id.
    """
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", "") or ""
    if name:
        return str(name)
    return f"unnamed-{getattr(config, 'model_type', type(model).__name__)}"


def set_model_id(model: Any, processor: Any, name: str) -> None:
    model.config._name_or_path = name
    tokenizer = getattr(processor, "tokenizer", processor)
    for obj in {id(processor): processor, id(tokenizer): tokenizer}.values():
        with contextlib.suppress(AttributeError):
            obj.name_or_path = name


def set_provenance(model: Any, provenance: dict[str, str]) -> None:
    """Record where the weights came from (source file, quantization) beside the model id."""
    if provenance:
        model.config.steerpeft_provenance = dict(provenance)


def prepare_tokenizer(tokenizer: Any) -> None:
    """Left padding (batched last-token reads and generation) and a pad token (falls back to eos)."""
    if tokenizer is None:
        return
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"


def finish(model: Any, processor: Any, device: str | torch.device | None) -> tuple[Any, Any]:
    prepare_tokenizer(getattr(processor, "tokenizer", processor))
    model.to(resolve_device(device))
    model.eval()
    return model, processor

