"""Which model a plan or adapter was made for, and the one check that it fits the model at hand.

A direction means nothing on another model's activations, so plans and adapters record the
base model: its id (the Hub id or local path of `config._name_or_path`), where the weights
came from when that is not the Hub (a GGUF file and its quantization), its shape, and a short
fingerprint of its input embeddings.  A model fits when the shape matches and either the ids
name the same model or, for a model loaded from a local path (which names nothing), the
fingerprints match (e.g. the same GGUF loaded by steerpeft and by plain transformers).
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

import torch
from torch import nn

from steerpeft.architectures import ModelLayout, resolve_layout, unwrap_model
from steerpeft.errors import AdapterError, ShapeError
from steerpeft.inputs.batches import video_frame_token_id

_FINGERPRINT_ROWS = 16


def model_id(model: nn.Module) -> str:
    """The id plans and adapters record: `config._name_or_path`, or the id steerpeft set on the model."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(model, "_steerpeft_model_id", "") or "")


def weight_provenance(model: nn.Module) -> dict[str, str]:
    """Where the weights came from, when steerpeft loaded them from a file (source file, quantization)."""
    record = getattr(getattr(model, "config", None), "steerpeft_provenance", None)
    return {str(k): str(v) for k, v in record.items()} if isinstance(record, dict) else {}


def weights_fingerprint(model: nn.Module) -> str | None:
    """A short hash of the first input-embedding rows (float32 bytes and the table's shape).

    Cheap (16 rows) and exact: two loads of the same weights in float32 agree, any retraining or
    other quantization does not.  None for models without an input embedding.
    """
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    weight = getattr(embedding, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.is_meta:
        return None
    rows = weight.detach()[:_FINGERPRINT_ROWS].to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256(str(tuple(weight.shape)).encode())
    digest.update(rows.numpy().tobytes())
    return digest.hexdigest()[:16]


def normalised_name(name: str) -> str:
    """The last part of a Hub id or path, lower case (a cache snapshot path counts as its repo)."""
    # steerpeft 0.1 folded the source into the id ("org/name (GGUF Q4_1 from ...)"): the id is the part
    # before.
    text = re.sub(r"\s+\(.*\)$", "", name.strip()).rstrip("/")
    cached = re.search(r"models--([^/]+)--([^/]+)", text)
    if cached:
        text = f"{cached.group(1)}/{cached.group(2)}"
    return text.rsplit("/", 1)[-1].lower()


def check_model_id(
    model: nn.Module, recorded: dict[str, Any], force: bool = False, what: str = "adapter"
) -> None:
    """Refuse a model that is neither named like the recorded base model nor carries its weights."""
    expected, actual = str(recorded.get("model_id") or ""), model_id(model)
    if force or not expected or not actual or expected == actual:
        return
    if normalised_name(expected) == normalised_name(actual):
        return  # the same model from a local folder, a cache snapshot or the Hub
    fingerprint = recorded.get("weights_fingerprint")
    if fingerprint and _is_local_path(actual) and fingerprint == weights_fingerprint(model):
        return  # the same weights loaded from a local file (e.g. the same GGUF through plain transformers)
    raise AdapterError(
        f"This {what} was made for base model {expected!r}, but the model is {actual!r}. Steering directions "
        "do not transfer between models: load the right base model, or pass force=True if it is the same "
        "model under another name."
    )


def _is_local_path(name: str) -> bool:
    """A path names no model (a Hub id does): there only the weights can tell."""
    return os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name)


def check_shape(info: dict[str, Any], hidden_size: int, num_layers: int, what: str = "adapter") -> None:
    """Refuse a model whose hidden size or layer count differs from the recorded one."""
    for key, actual in (("hidden_size", hidden_size), ("num_layers", num_layers)):
        if key in info and int(info[key]) != actual:
            fix = "fit it again on this model" if what == "plan" else "export the plan again from this one"
            raise ShapeError(
                f"This {what} was made for a model with {key}={info[key]}, but the model has {key}={actual}: "
                f"it was made for {info.get('model_id') or 'another model'!r}. Load it on that model, or "
                f"{fix}."
            )


def fitting_layout(
    model: nn.Module, info: dict[str, Any], what: str = "adapter", *, force: bool = False
) -> ModelLayout:
    """The model's layout, when a plan or adapter whose recorded model is `info` fits it.

    The one check plans and adapters share: the recorded layer paths must resolve and, unless
    `force`, the hidden size and layer count must match.  (The model id is checked by
    `check_model_id`, which only loaders of shared files need.)
    """
    layout = resolve_layout(unwrap_model(model), info.get("layers_path"), info.get("embedding_path"))
    if not force:
        check_shape(info, layout.hidden_size, layout.num_layers, what)
    return layout


def model_info(model: nn.Module, layout: ModelLayout, processor: Any = None) -> dict[str, Any]:
    """Provenance recorded in plans and adapters, checked when they are applied.

    With a processor that sends video frames through image tokens (SmolVLM2), the id of its
    per-frame marker is kept too, so applied plans can tell video rows from image rows.
    """
    info: dict[str, Any] = {
        "model_id": model_id(model),
        "model_type": layout.family,
        "hidden_size": layout.hidden_size,
        "num_layers": layout.num_layers,
        "layers_path": layout.layers_path,
        "embedding_path": layout.embedding_path,
    }
    fingerprint = weights_fingerprint(model)
    if fingerprint:
        info["weights_fingerprint"] = fingerprint
    info.update(weight_provenance(model))
    if processor is not None and layout.video_token_id is None:
        frame = video_frame_token_id(processor)
        if frame is not None:
            info["video_frame_token_id"] = frame
    return info
