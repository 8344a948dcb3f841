"""`export_adapter`: write a plan as a PEFT adapter folder (LoRA, STEER, or both).

Layouts (every kind also has `README.md`, the model card, and `steerpeft.json`, the provenance
steerpeft's loader checks; stock tools ignore both):

- lora:     adapter_config.json (peft_type LORA) + adapter_model.safetensors
- steer:    adapter_config.json (peft_type STEER) + adapter_model.safetensors
- combined: the LoRA part at the root, the STEER part in `steer/`

`kind="auto"` picks LoRA when every step is exactly a weight delta, combined when the constant
additions are and they touch no layer the other steps touch (so the split cannot change the
order in which steps see the residual stream), and STEER otherwise.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from steerpeft.adapters.card import render_card
from steerpeft.adapters.lora_export import lora_payload, lora_support, plan_lora_support
from steerpeft.adapters.peft_hook import require_steer
from steerpeft.architectures import ModelLayout, unwrap_model
from steerpeft.errors import AdapterError, ConfigError
from steerpeft.formats import ADAPTER_FORMAT, META_FILE
from steerpeft.io import atomic_folder, write_json, write_tensors
from steerpeft.plan import Plan

__all__ = ["ADAPTER_FORMAT", "META_FILE", "STEER_SUBFOLDER", "export_adapter"]

STEER_SUBFOLDER = "steer"
KINDS = ("auto", "lora", "steer")


def export_adapter(plan: Plan, model: nn.Module, path: str | os.PathLike, *, kind: str = "auto",
                   card: dict[str, Any] | None = None) -> Path:
    """Write `plan`, fitted on `model`, as a PEFT adapter folder at `path` (atomically); return the path.

    `kind`: "lora" (plain LoRA; refused when a step is not a weight delta), "steer" (the plan as a
    STEER adapter, always exact), or "auto" (see the module docstring).  `card` adds to or
    overrides the model card's fields (license, title, description, tags, ...).
    """
    if kind not in KINDS:
        raise ConfigError(f"export kind must be one of {KINDS}, got {kind!r}.")
    base = unwrap_model(model)
    layout = plan.layout_for(base)
    model_id = str(
        plan.model_info.get("model_id") or getattr(getattr(base, "config", None), "_name_or_path", "") or ""
    )
    info = {
        **plan.model_info, "model_id": model_id, "hidden_size": layout.hidden_size,
        "num_layers": layout.num_layers, "layers_path": layout.layers_path,
        "embedding_path": layout.embedding_path,
        "model_type": plan.model_info.get("model_type", layout.family),
    }
    plan = Plan(plan.steps, info, plan.metadata)

    chosen, lora_plan, steer_plan = _choose(plan, layout, kind)
    versions = _versions()
    notes: list[str] = []
    exact, mergeable = True, False
    if lora_plan is not None:
        payload = lora_payload(lora_plan, base, layout, model_id)
        if not payload.exact:
            warnings.warn(
                "Exporting layer ablation as LoRA: it becomes weight orthogonalization, which differs from "
                "the hooked plan (each layer's MLP reads the residual before the layer output is ablated). "
                "Use kind='steer' for an exact export.",
                UserWarning,
                stacklevel=2,
            )
        exact, mergeable = payload.exact, payload.mergeable and steer_plan is None
        notes += payload.notes
    if steer_plan is not None:
        notes.append(
            "STEER steps act on activations: they cannot be merged into weights (unload() removes them)."
        )
    if chosen == "combined":
        notes.append("The LoRA part holds the constant additions; the STEER part in `steer/` holds the rest. "
                     "Loaded together they reproduce the plan exactly.")

    with atomic_folder(path) as staging:
        if lora_plan is not None:
            payload.config.save_pretrained(str(staging))
            write_tensors(staging / "adapter_model.safetensors", payload.tensors, {"format": "pt"})
        if steer_plan is not None:
            _write_steer(staging / STEER_SUBFOLDER if chosen == "combined" else staging, steer_plan, layout,
                         model_id, versions)
        meta = {
            "format": ADAPTER_FORMAT,
            "kind": chosen,
            "model": info,
            "exact": exact,
            "mergeable": mergeable,
            "steer_subfolder": STEER_SUBFOLDER if chosen == "combined" else None,
            "versions": versions,
        }
        write_json(staging / META_FILE, meta)
        extra = {"model_id": model_id, "exact": exact, "mergeable": mergeable, "notes": notes,
                 "versions": versions, **(card or {})}
        (staging / "README.md").write_text(render_card(plan, chosen, extra), encoding="utf-8")
    return Path(path)


def _choose(plan: Plan, layout: ModelLayout, kind: str) -> tuple[str, Plan | None, Plan | None]:
    """(kind, LoRA part, STEER part)."""
    if kind == "steer":
        return "steer", None, plan
    expressible, exact, reasons = plan_lora_support(plan, layout)
    if kind == "lora":
        if not expressible:
            raise AdapterError("This plan cannot be exported as a plain LoRA: " + "; ".join(reasons)
                               + ". Use kind='steer' or kind='auto'.")
        return "lora", plan, None
    if expressible and exact:
        return "lora", plan, None
    additions = [s for s in plan.steps if lora_support(s, layout).form == "add"]
    rest = [s for s in plan.steps if s not in additions]
    touched: set[int] = set()
    for step in rest:
        touched |= set(step.directions) | step.scaler.observed_layers()
    if additions and rest and all(touched.isdisjoint(s.directions) for s in additions):
        return ("combined", Plan(additions, plan.model_info, plan.metadata),
                Plan(rest, plan.model_info, plan.metadata))
    return "steer", None, plan


def _write_steer(
    folder: Path, plan: Plan, layout: ModelLayout, model_id: str, versions: dict[str, str]
) -> None:
    steer = require_steer()
    spec, manifest, tensors = steer.steer_payload(plan, layout)
    config = steer.SteerConfig(
        plan=spec,
        tensors=manifest,
        steerpeft_version=versions.get("steerpeft"),
        base_model_name_or_path=model_id or None,
        task_type="CAUSAL_LM",
        inference_mode=True,
    )
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    write_tensors(folder / "adapter_model.safetensors", tensors, {"format": "pt"})


def _versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in ("steerpeft", "peft", "transformers", "torch"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
