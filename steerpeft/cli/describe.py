"""`steerpeft info`: what a plan, adapter or run folder holds, read from its files without loading a model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from steerpeft.errors import ConfigError
from steerpeft.io import read_adapter_meta
from steerpeft.plan import Plan
from steerpeft.report.metrics import limits_cell, plan_section, plan_warnings
from steerpeft.report.terminal import summary_table, text_table
from steerpeft.run.folder import describe_path


def cmd_info(args: argparse.Namespace) -> int:
    kind, folder = describe_path(args.path)
    if kind == "adapter":
        print(describe_adapter_text(folder))
        return 0
    plan_dir = folder / "plan" if kind == "run" else folder
    plan = Plan.load(plan_dir)
    print(describe_plan_text(plan, plan_section(plan), str(plan_dir)))
    if kind == "run":
        metrics_file = folder / "metrics.json"
        if metrics_file.is_file():
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
            print("\nresults (metrics.json):")
            print(summary_table(metrics, str(folder)))
        if (folder / "adapter" / "adapter_config.json").is_file():
            print("\n" + describe_adapter_text(folder / "adapter"))
    return 0


def describe_plan_text(plan: Any, section: dict[str, Any], where: str) -> str:
    info = plan.model_info
    lines = [f"plan: {where}",
             (f"  base model   {info.get('model_id', '?')} ({info.get('model_type', '?')}, "
             f"{info.get('num_layers', '?')} layers, hidden size {info.get('hidden_size', '?')})")]
    if plan.metadata.get("recipe_name"):
        lines.append(f"  recipe       {plan.metadata['recipe_name']}")
    for step in section["steps"]:
        layers = [layer for layer in step["layers"] if layer >= 0]
        shown = (
            ", ".join(map(str, layers)) if len(layers) <= 8
            else f"{layers[0]}..{layers[-1]} ({len(layers)} layers)"
        )
        if any(layer < 0 for layer in step["layers"]):
            shown += " + embedding"
        scaler = step["scaler"]
        params = ", ".join(f"{k}={v}" for k, v in (scaler.get("params") or {}).items())
        intervention = step["intervention"]
        iparams = ", ".join(f"{k}={v}" for k, v in (intervention.get("params") or {}).items())
        lines += [f"  step {step['name']!r}",
                  f"    layers       {shown}",
                  f"    positions    {step['positions'].get('kind', step['positions'])}",
                  f"    intervention {intervention.get('name')}" + (f" ({iparams})" if iparams else ""),
                  f"    scaler       {scaler.get('name')}" + (f" ({params})" if params else "")]
    if section.get("chosen_layer") is not None:
        lines.append(f"  chosen layer {section['chosen_layer']}: {section['reason']}")
    if section.get("tau") is not None:
        lines.append(f"  tau          {section['tau']:.4f}")
    lines += [f"  warning      {warning}" for warning in plan_warnings(section)]
    main = next((s for s in section["steps"] if s["name"] == section["main_step"]), None)
    table = (main or {}).get("layer_scores") or []
    if table:
        columns = [
            c for c in ("separation", "accuracy", "bypass", "induce", "kl", "false_trigger", "tau")
            if c in table[0]
        ]
        rows = []
        for row in table:
            cells = [row["layer"]] + [_cell(row.get(c), c) for c in columns]
            if "within_limits" in row:
                cells.append(limits_cell(row))
            cells.append("<- chosen" if row.get("chosen") else "")
            rows.append(cells)
        headers = ["layer", *columns] + (["within limits"] if "within_limits" in table[0] else []) + [""]
        lines += ["", "  per-layer scores (validation prompts):", text_table(headers, rows, indent="    ")]
    return "\n".join(lines)


def _cell(value: Any, column: str) -> str:
    if value is None:
        return "-"
    if column == "false_trigger":
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-4 or value == 0 else f"{value:.1e}"
    return str(value)


def describe_adapter_text(folder: Path) -> str:
    """Base model, kind, exactness, and what it steers: the embedded plan (STEER) or the LoRA targets."""
    def read(name: str) -> dict[str, Any]:
        path = folder / name
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); the adapter is corrupt.") from exc

    config, meta = read("adapter_config.json"), read_adapter_meta(folder)
    model = meta.get("model") or (config.get("plan") or {}).get("model") or {}
    base = config.get("base_model_name_or_path") or model.get("model_id") or "?"
    lines = [f"adapter: {folder}", f"  base model   {base}"
             + (f" ({model.get('model_type')}, {model.get('num_layers')} layers, hidden size "
                f"{model.get('hidden_size')})" if model.get("model_type") else "")]
    kind = meta.get("kind") or (
        "lora" if str(config.get("peft_type", "")).upper() == "LORA" else config.get("peft_type")
    )
    lines.append(f"  kind         {kind}")
    if meta:
        lines.append(f"  exact        {'yes' if meta.get('exact') else 'no'}; mergeable into the weights: "
                     f"{'yes' if meta.get('mergeable') else 'no'}")
    if str(config.get("peft_type", "")).upper() == "LORA":
        lines.append(f"  lora         rank {config.get('r')}, alpha {config.get('lora_alpha')}, "
                     f"targets {config.get('target_modules')}")
    plan = config.get("plan") or {}
    for step in plan.get("steps", []):
        scaler = step.get("scaler") or {}
        params = ", ".join(f"{k}={v}" for k, v in (scaler.get("params") or {}).items())
        lines += [f"  step {step.get('name')!r}",
                  f"    layers       {', '.join(map(str, step.get('layers', [])))}",
                  f"    positions    {(step.get('positions') or {}).get('kind', step.get('positions'))}",
                  f"    intervention {(step.get('intervention') or {}).get('name')}",
                  f"    scaler       {scaler.get('name')}" + (f" ({params})" if params else "")]
    recipe = (plan.get("metadata") or {}).get("recipe_name")
    if recipe:
        lines.append(f"  recipe       {recipe}")
    if (folder / "steer" / "adapter_config.json").is_file():
        lines.append(
            "  steer/       the STEER part of a combined export (steerpeft's load_adapter loads both)"
        )
    files = sorted(p for p in folder.iterdir() if p.is_file())
    lines.append("  files        " + ", ".join(f"{p.name} ({_size(p.stat().st_size)})" for p in files))
    if (folder / "README.md").is_file():
        lines.append("  (README.md is the model card: provenance, scores, how to load)")
    return "\n".join(lines)


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)
