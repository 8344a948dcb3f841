"""`load_adapter`: one call for plain LoRA, STEER and combined exports.

Everything is checked before PEFT touches the model: the config's `peft_type`, the safetensors
file (truncation, corruption), the hidden size and layer count against the model, and the
recorded base model id (refused when it differs, unless `force=True`).

Stacking.  A LoRA adapter goes into the model the way the model already holds adapters: a new
`PeftModel`, a further adapter of the user's LoRA `PeftModel`, or transformers' own
`load_adapter` when the model uses that integration.  A STEER adapter always becomes the outer
`PeftModel`, wrapping whatever it is given (plain model, LoRA `PeftModel`, combined export's LoRA
part): its `disable_adapter()` switches off every adapter layer inside too, and its `unload()`
returns the wrapped model (for a combined export, the plain base model).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from torch import nn

from steerpeft.adapters.exporting import STEER_SUBFOLDER
from steerpeft.adapters.lora_export import untie_embeddings
from steerpeft.adapters.peft_hook import require_steer
from steerpeft.architectures import ArchitectureError, ModelLayout, get_module, unwrap_model
from steerpeft.errors import AdapterError, ShapeError
from steerpeft.formats import CHILD_NAME, LEGACY_KEY_PARTS, TENSORS_ATTR, is_steer_peft_type
from steerpeft.io import read_adapter_meta, read_json, read_tensors
from steerpeft.plan import check_plan_config
from steerpeft.provenance import check_model_id, fitting_layout

__all__ = ["check_model", "load_adapter"]

_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<path>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|"
    r"lora_embedding_A|lora_embedding_B)$"
)


def load_adapter(model: nn.Module, path: str | os.PathLike, *, adapter_name: str | None = None,
                 force: bool = False) -> nn.Module:
    """Load the adapter at `path` (a folder, or a Hub repo id) onto `model`; return the steered model.

    Returns a `PeftModel`, except when `model` holds adapters through transformers' own integration
    and the adapter is a plain LoRA: then it is added there and `model` itself is returned.
    `force=True` loads an adapter recorded for a different base model id (shapes are still checked).
    A LoRA on the token embedding unties a tied `lm_head` first (it gets its own copy of the
    weight), so that `merge_and_unload()` stays exact; unmerged, tied or not makes no difference.
    """
    folder = _resolve(path)
    base = unwrap_model(model)
    meta = read_adapter_meta(folder)
    root_kind, root_config = _read_config(folder)
    steer_folder = folder / STEER_SUBFOLDER
    has_steer_part = root_kind == "lora" and (steer_folder / "adapter_config.json").is_file()

    check_model_id(base, _recorded_model(meta, root_config), force)
    if meta.get("model"):
        check_model(base, meta["model"])
    parts = [(folder, root_kind, root_config)]
    if has_steer_part:
        steer_kind, steer_config = _read_config(steer_folder)
        if steer_kind != "steer":
            raise AdapterError(
                f"{steer_folder} should hold the STEER part of a combined export, found {steer_kind}."
            )
        parts.append((steer_folder, steer_kind, steer_config))
    embedding_lora = False
    for part_folder, kind, config in parts:
        tensors = read_tensors(part_folder / "adapter_model.safetensors")
        if kind == "lora":
            _check_lora_tensors(base, tensors, part_folder)
            embedding_lora = any(key.endswith("lora_embedding_A") for key in tensors)
        else:
            _check_steer_tensors(base, config, tensors, part_folder)

    result = model
    owns_inner = False
    for part_folder, kind, _ in parts:
        if kind == "lora":
            if embedding_lora:
                untie_embeddings(base)  # so that merging the embedding LoRA leaves lm_head alone
            result, owns_inner = _load_lora(result, part_folder, adapter_name)
        else:
            result = _load_steer(result, part_folder, adapter_name, owns_inner)
    return result


# --------------------------------------------------------------------------- reading and checks


def _resolve(path: str | os.PathLike) -> Path:
    folder = Path(path)
    if folder.is_dir():
        return folder
    if folder.exists():
        raise AdapterError(f"{folder} is a file; pass the adapter folder.")
    text = str(path)
    if text.count("/") == 1 and not text.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(repo_id=text))
        except Exception as exc:
            raise AdapterError(
                f"{text!r} is not a local folder and could not be downloaded from the Hub: {exc}"
            ) from exc
    raise AdapterError(
        f"{folder} does not exist: pass an adapter folder written by export_adapter (or a Hub repo id)."
    )


def _read_config(folder: Path) -> tuple[str, dict[str, Any]]:
    config = read_json(folder / "adapter_config.json")
    if not isinstance(config, dict):
        raise AdapterError(f"{folder / 'adapter_config.json'} is not a JSON object: the file is corrupt.")
    peft_type = config.get("peft_type")
    if peft_type == "LORA":
        return "lora", config
    if is_steer_peft_type(peft_type):
        return "steer", config
    raise AdapterError(
        f"{folder / 'adapter_config.json'} has peft_type {peft_type!r}: steerpeft loads plain LoRA and STEER "
        "adapters only. For other PEFT methods use peft.PeftModel.from_pretrained directly."
    )


def _recorded_model(meta: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The recorded base model: the plan's model info, the PEFT config's base model as a fallback."""
    model = dict(meta.get("model") or (config.get("plan") or {}).get("model") or {})
    model["model_id"] = str(model.get("model_id") or config.get("base_model_name_or_path") or "")
    return model


def _check_lora_tensors(model: nn.Module, tensors: dict[str, Any], folder: Path) -> None:
    for key, tensor in tensors.items():
        match = _LORA_KEY.match(key)
        if match is None:
            continue
        path, part = match.group("path"), match.group("part")
        try:
            module = get_module(model, path)
        except ArchitectureError:
            raise ShapeError(
                f"{folder.name}: the adapter targets {path!r}, which this model does not have (different "
                "layer count or architecture): it was made for another model."
            ) from None
        inner = module
        for _ in range(4):
            if isinstance(inner, (nn.Linear, nn.Embedding)):
                break
            inner = getattr(inner, "base_layer", inner)
        if isinstance(inner, nn.Embedding):
            expected = {
                "lora_embedding_A": (None, inner.num_embeddings),
                "lora_embedding_B": (inner.embedding_dim, None),
            }
        elif isinstance(inner, nn.Linear):
            expected = {
                "lora_A.weight": (None, inner.in_features), "lora_B.weight": (inner.out_features, None),
                "lora_B.bias": (inner.out_features,),
            }
        else:
            raise ShapeError(f"{folder.name}: the adapter targets {path!r}, a {type(inner).__name__}, not a "
                             "Linear or Embedding layer: it was made for another model.")
        want = expected.get(part)
        if want is None:
            raise ShapeError(f"{folder.name}: {part} does not fit {path!r} ({type(inner).__name__}).")
        shape = tuple(tensor.shape)
        if len(shape) != len(want) or any(w is not None and w != s for w, s in zip(want, shape)):
            raise ShapeError(
                f"{folder.name}: {key} has shape {list(shape)}, which does not fit {path!r} of this model "
                f"(expected {['*' if w is None else w for w in want]}): the hidden size differs, the adapter "
                "was made for another model."
            )


def _check_steer_tensors(
    model: nn.Module, config: dict[str, Any], tensors: dict[str, Any], folder: Path
) -> None:
    steer = require_steer()
    plan = config.get("plan")
    if not isinstance(plan, dict) or not isinstance(config.get("tensors"), list):
        raise AdapterError(
            f"{folder / 'adapter_config.json'} is not a complete STEER config (plan or tensors missing)."
        )
    check_plan_config(plan, "STEER adapter")
    info = plan.get("model") or {}
    check_model(model, info)
    parts = next(
        (p for p in LEGACY_KEY_PARTS if any(f".{p[0]}.{p[1]}." in k for k in tensors)),
        (CHILD_NAME, TENSORS_ATTR),
    )
    for entry in config["tensors"]:
        key = steer.canonical_key(info, int(entry["host"]), entry["key"], parts)
        if key not in tensors:
            raise AdapterError(
                f"{folder.name}: adapter_model.safetensors lacks {key}: the adapter is incomplete."
            )
        if list(tensors[key].shape) != [int(d) for d in entry["shape"]]:
            raise ShapeError(f"{folder.name}: {key} has shape {list(tensors[key].shape)}, the config says "
                             f"{entry['shape']}: the files do not belong together.")


def check_model(model: nn.Module, info: dict[str, Any]) -> ModelLayout:
    """The model's layout, refusing a hidden size or layer count other than the adapter's."""
    return fitting_layout(model, info, "adapter")


# --------------------------------------------------------------------------- loading


def _is_peft_model(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _load_lora(model: nn.Module, folder: Path, adapter_name: str | None) -> tuple[nn.Module, bool]:
    from peft import PeftModel
    from peft.utils import PeftType

    if _is_peft_model(model):
        if model.peft_type != PeftType.LORA:
            raise AdapterError(
                "This model is already wrapped by a non-LoRA PEFT adapter; load the LoRA adapter on the "
                "plain model first, then the other adapter."
            )
        name = adapter_name or _free_name(model.peft_config, "steerpeft")
        active = list(model.base_model.active_adapters)
        model.load_adapter(str(folder), adapter_name=name)
        model.base_model.set_adapter([*active, name])
        return model, False
    base = unwrap_model(model)
    if getattr(base, "_hf_peft_config_loaded", False) and model is base:
        name = adapter_name or _free_name(base.peft_config, "steerpeft")
        active = list(base.active_adapters())  # transformers makes the new adapter the only active one
        base.load_adapter(str(folder), adapter_name=name)
        base.set_adapter([*active, name])
        return base, False
    return PeftModel.from_pretrained(model, str(folder), adapter_name=adapter_name or "default"), True


def _load_steer(model: nn.Module, folder: Path, adapter_name: str | None, owns_inner: bool) -> nn.Module:
    from peft import PeftModel

    steer = require_steer()
    if _is_peft_model(model) and isinstance(model.base_model, steer.SteerModel):
        name = adapter_name or _free_name(model.peft_config, "steering")
        active = list(model.base_model.active_adapters)
        model.load_adapter(str(folder), adapter_name=name)
        model.base_model.set_adapter([*active, name])
        return model
    wrapped = PeftModel.from_pretrained(model, str(folder), adapter_name=adapter_name or "default")
    wrapped.base_model._unload_inner = owns_inner
    return wrapped


def _free_name(existing: Any, stem: str) -> str:
    name, index = stem, 1
    while name in existing:
        index += 1
        name = f"{stem}_{index}"
    return name
