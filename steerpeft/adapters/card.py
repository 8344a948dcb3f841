"""The README.md model card written next to every exported adapter.

The card is the adapter's provenance: base model, what each step does (intervention, layers,
positions, scaler parameters), the scores recorded at fit time, how to load it, whether it is
exact and mergeable, and the library versions that wrote it.  Everything comes from the plan
(`model_info`, `metadata`) and the exporter's `extra` dict; the user's `card` dict (license,
title, description, tags, anything else) is merged into `extra`.
"""

from __future__ import annotations

import json
from typing import Any

from steerpeft.plan import EMBEDDING, Plan

__all__ = ["render_card"]

_KIND_TEXT = {
    "lora": "a plain LoRA: stock PEFT and transformers load it without steerpeft",
    "steer": "a STEER adapter: a steerpeft plan packaged as a PEFT method (needs `import steerpeft`)",
    "combined": "a plain LoRA at the root (stock tools load that part) plus a STEER adapter in `steer/` "
                "(needs steerpeft) for the steps a weight delta cannot express",
}


def render_card(plan: Plan, kind: str, extra: dict[str, Any]) -> str:
    """Markdown with YAML front matter for an adapter of `kind` ("lora", "steer" or "combined")."""
    info = plan.model_info
    model_id = str(extra.get("model_id") or info.get("model_id") or "")
    license_id = str(extra.get("license") or "other")
    tags = ["steerpeft", "activation-steering", "peft", "lora" if kind != "steer" else "steer"]
    tags += [t for t in extra.get("tags", []) if t not in tags]
    front = ["---", "library_name: peft"]
    if model_id:
        front.append(f"base_model: {_yaml_string(model_id)}")
    front.append(f"license: {_yaml_string(license_id)}")
    front.append("tags:")
    front += [f"- {_yaml_string(t)}" for t in tags]
    front.append("---")

    title = extra.get("title") or f"Steering adapter for {model_id or 'its base model'}"
    lines = [*front, "", f"# {title}", ""]
    if extra.get("description"):
        lines += [str(extra["description"]), ""]
    lines += [(f"This folder is {_KIND_TEXT.get(kind, kind)}. It was exported by steerpeft from a fitted "
               "steering plan."), ""]

    lines += ["## How to load", "", "```python", "from transformers import AutoModelForCausalLM"]
    if kind == "lora":
        lines += ["from peft import PeftModel", "",
                  f"model = AutoModelForCausalLM.from_pretrained({model_id or '<base model>'!r})",
                  "model = PeftModel.from_pretrained(model, '<this folder or repo>')",
                  "# or, without peft's wrapper: model.load_adapter('<this folder or repo>')"]
    else:
        lines += ["import steerpeft  # registers the STEER method with PEFT",
                  "from steerpeft.adapters import load_adapter", "",
                  f"model = AutoModelForCausalLM.from_pretrained({model_id or '<base model>'!r})",
                  "model = load_adapter(model, '<this folder>')  # a PeftModel"]
    lines += ["```", ""]
    if kind == "steer":
        lines += [
            "Without `import steerpeft`, PEFT stops with `KeyError: 'STEER (load with steerpeft: ...)'`.", "",
        ]
    if kind == "combined":
        lines += [("`PeftModel.from_pretrained` alone loads only the LoRA part at the root; "
                   "steerpeft's `load_adapter` loads both."), ""]

    lines += ["## Steering steps", "", "| step | intervention | layers | positions | scaler | parameters |",
              "|---|---|---|---|---|---|"]
    for step in plan.steps:
        intervention = step.intervention.to_config()
        scaler = step.scaler.to_config()
        params = {**{f"intervention.{k}": v for k, v in intervention.get("params", {}).items()},
                  **_describe(step.scaler)}
        lines.append(f"| {step.name} | {intervention['name']} | {_layers(step.layers)} | {step.positions} | "
                     f"{scaler['name']} | {_cell(params)} |")
    lines.append("")

    scores = _scores(plan)
    if scores:
        lines += ["## Scores recorded at fit time", ""] + scores + [""]

    lines += ["## Exactness and merging", ""]
    if "exact" in extra:
        lines.append(
            "- Exact: "
            + (
                "yes, the adapter reproduces the steerpeft plan's forward pass (float32, up to rounding)."
                if extra["exact"] else "no, see the notes below."
            )
        )
    if "mergeable" in extra:
        lines.append("- Mergeable (`merge_and_unload`): " + ("yes." if extra["mergeable"] else "no."))
    for note in extra.get("notes", []):
        lines.append(f"- {note}")
    lines.append("")

    lines += ["## Provenance", "", "| field | value |", "|---|---|"]
    provenance = {
        "base model": model_id or "(not recorded)",
        "weights source file": info.get("source_file", ""),
        "quantization": info.get("quantization", ""),
        "weights fingerprint": info.get("weights_fingerprint", ""),
        "model type": info.get("model_type", ""),
        "hidden size": info.get("hidden_size", ""),
        "decoder layers": info.get("num_layers", ""),
        "layers path": info.get("layers_path", ""),
        "adapter kind": kind,
        "license": license_id,
        **{f"{name} version": version for name, version in extra.get("versions", {}).items()},
    }
    recipe = plan.metadata.get("recipe_name")
    if recipe:
        provenance["recipe"] = recipe
    lines += [f"| {k} | {_cell(v)} |" for k, v in provenance.items() if v != ""]
    lines.append("")
    if license_id == "other":
        lines += [
            "No license was given at export (`card={'license': ...}`): the base model's license applies.", "",
        ]
    shown = {"model_id", "license", "tags", "title", "description", "exact", "mergeable", "notes", "versions"}
    rest = {k: v for k, v in extra.items() if k not in shown}
    if rest:
        lines += [
            "## Details", "", "```json", json.dumps(rest, indent=2, sort_keys=True, default=str), "```", "",
        ]
    return "\n".join(lines)


def _describe(scaler: Any) -> dict[str, Any]:
    try:
        described = scaler.describe()
    except (AttributeError, KeyError, TypeError, ValueError):  # an uncalibrated scaler still gets a card
        described = scaler.to_config().get("params", {})
    return {f"scaler.{k}": v for k, v in described.items()}


def _layers(layers: list[int]) -> str:
    return ", ".join("embedding" if layer == EMBEDDING else str(layer) for layer in layers)


def _scores(plan: Plan) -> list[str]:
    lines: list[str] = []
    for name, step_meta in (plan.metadata.get("steps") or {}).items():
        if not isinstance(step_meta, dict):
            continue
        table = step_meta.get("layer_scores") or []
        if step_meta.get("selected_layers") is not None:
            lines.append(f"Step `{name}`: selected layers {step_meta['selected_layers']}.")
        if table and isinstance(table, list) and isinstance(table[0], dict):
            columns = list(table[0])
            lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in table]
            lines.append("")
    for key in ("scores", "evaluation"):
        if plan.metadata.get(key):
            lines += [f"{key.capitalize()}: `{_cell(plan.metadata[key])}`"]
    return lines


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "; ".join(f"{k}={_cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _yaml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar
