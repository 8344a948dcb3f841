"""The run record: one JSON-ready dict holding everything a report shows.

`build_metrics` gathers the fitted plan (per-layer table, chosen layer, tau),
the evaluation (summary table and every per-prompt answer), the gate values,
the adapter export, timings, versions and the command line.  The markdown
report, the plots and the terminal summary read only this dict, so each number
they show can be traced back to `metrics.json` and recomputed from it.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from steerpeft.formats import RUN_FORMAT
from steerpeft.mars.evaluation import mars_step
from steerpeft.mars.scaler import TrustRegionScaler

if TYPE_CHECKING:
    from steerpeft.evaluation import EvalReport
    from steerpeft.plan import Plan, SteeringStep

"""`format` of a run's metrics.json."""

LIMIT_KEYS = ("kl", "false_trigger", "induce")


def versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers (missing ones are left out)."""
    from importlib import metadata

    found = {"python": platform.python_version(), "platform": platform.platform(terse=True)}
    for package in ("steerpeft", "torch", "transformers", "peft", "accelerate", "safetensors", "omegaconf"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def clean(value: Any) -> Any:
    """`value` as strict JSON: tensors to lists, NaN/inf to None, tuples to lists, keys to str."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


# ---------------------------------------------------------------------------
# The plan


def main_step(plan: Plan) -> SteeringStep:
    """The step a report is about: the MARS (trust-region) step, else the first with a layer table."""
    step = mars_step(plan)
    if step is not None:
        return step
    steps_meta = plan.metadata.get("steps", {})
    for candidate in plan.steps:
        if steps_meta.get(candidate.name, {}).get("layer_scores"):
            return candidate
    return plan.steps[0]


def step_tau(step: SteeringStep) -> float | None:
    """The gate threshold of a trust-region step (None for other scalers)."""
    if isinstance(step.scaler, TrustRegionScaler) and step.scaler.tau is not None:
        return float(step.scaler.tau)
    return None


def selection_reason(step_meta: Mapping[str, Any], chosen: int | None) -> str:
    """One or two sentences on why `chosen` was picked, from the selector's config and table."""
    selector = step_meta.get("selector") or {}
    name = selector.get("name", "?")
    params = selector.get("params") or {}
    table = list(step_meta.get("layer_scores") or [])
    row = next((r for r in table if r.get("layer") == chosen), None)
    if chosen is None:
        return "No layer was recorded for this step."
    if name == "mars" and row is not None:
        limits = {"kl": 0.1, "false_trigger": 0.05, "induce": 0.0, **(params.get("limits") or {})}
        rule = (f"KL <= {limits['kl']:g} nats on harmless prompts, false-trigger rate <= "
                f"{limits['false_trigger']:.0%} on held-out harmless inputs (judged on its 95% lower "
                f"bound), induce score > {limits['induce']:g}, tau < 1")
        eligible = [r for r in table if r.get("within_limits")]
        if row.get("within_limits") and params.get("score") == "refusal" and row.get("refusal") is not None:
            tied = [r for r in eligible if r.get("refusal") == row["refusal"]]
            unsteered = row.get("refusal_unsteered")
            before = f", against {unsteered:.0%} unsteered" if isinstance(unsteered, (int, float)) else ""
            tie = (f"; of the {len(tied)} layers tied there, it separates best "
                   f"(AUROC {row['separation']:.3f})") if len(tied) > 1 else ""
            return (f"Layer {chosen} makes the model refuse the most validation harmful prompts under "
                    f"its gate ({row['refusal']:.0%}{before}) of the {len(eligible)} of {len(table)} "
                    f"candidate layers within the limits ({rule}){tie}.")
        if row.get("within_limits"):
            return (f"Layer {chosen} has the highest separation (AUROC {row['separation']:.3f}) of the "
                    f"{len(eligible)} of {len(table)} candidate layers within the limits ({rule}).")
        return (f"No candidate layer met every limit ({rule}), so layer {chosen} was taken anyway "
                f"(on_no_layer=best) for the highest separation overall (AUROC {row['separation']:.3f}); it "
                f"was excluded by: {'; '.join(row.get('excluded_by') or ['?'])}. Treat this direction with "
                "care: fit on more prompts, or relax the limits (steps.0.selector.limits.*).")
    if name == "bypass" and row is not None:
        bounds = selector_limits(selector) or {}
        limits = f"KL <= {bounds['kl']:g} nats on harmless prompts, induce > {bounds['induce']:g}"
        if row.get("within_limits"):
            eligible = sum(1 for r in table if r.get("within_limits"))
            costly = [r["kl"] for r in table
                      if r.get("bypass", 0.0) < row["bypass"] and r.get("kl", 0.0) > bounds["kl"]]
            trade = (
                f" {len(costly)} direction(s) that remove more refusal exceed the KL limit (the cheapest: KL "
                f"{min(costly):.3g}): raising steps.0.selector.max_kl trades changed harmless answers for "
                "less refusal (trade.png draws the trade)."
                if costly else ""
            )
            return (
                f"Removing layer {chosen}'s direction lowers refusal on the validation harmful prompts most "
                f"(bypass {row['bypass']:.2f}) of the {eligible} of {len(table)} candidate layers within the "
                f"limits ({limits}).{trade}"
            )
        return (
            f"No candidate layer met every limit ({limits}), so layer {chosen} was taken anyway "
            f"(on_no_layer=best: the lowest bypass within the KL limit, else the lowest KL); it was excluded "
            f"by: {'; '.join(row.get('excluded_by') or ['?'])}. Treat this direction with care."
        )
    if name == "sweep" and row is not None:
        score = params.get("score", "separation")
        better = "highest" if params.get("maximize", True) else "lowest"
        value = row.get(score)
        shown = f" ({value:.3f})" if isinstance(value, (int, float)) else ""
        return f"Layer {chosen} has the {better} {score}{shown} of the {len(table)} candidate layers."
    return f"Layer {chosen} was given by the recipe (selector {name!r})."


def limits_cell(row: Mapping[str, Any]) -> str:
    """"yes", or "no (tau, kl)": which limits excluded a scored layer, in a table cell."""
    if row.get("within_limits"):
        return "yes"
    reasons = [str(reason).split()[0] for reason in row.get("excluded_by") or []]
    return f"no ({', '.join(reasons)})" if reasons else "no"


def plan_warnings(section: Mapping[str, Any]) -> list[str]:
    """What a reader of this plan must know before trusting it: a fallback layer, a gate that cannot act."""
    found = []
    main = next((s for s in section.get("steps", []) if s.get("name") == section.get("main_step")), {})
    chosen = next((r for r in main.get("layer_scores") or [] if r.get("chosen")), {})
    if chosen.get("fallback"):
        found.append(f"no candidate layer met the selector's limits; layer {chosen.get('layer')} was taken "
                     f"anyway (excluded by: {'; '.join(chosen.get('excluded_by') or [])})")
    tau = section.get("tau")
    form = ((main.get("scaler") or {}).get("params") or {}).get("form")
    if tau is not None and tau >= 1 and form == "traversal":
        found.append(f"tau {tau:.3f} >= 1: the traversal gate opens only past the harmful centroid, where "
                     "its update is 0, so this plan changes (almost) nothing")
    return found


def plan_section(plan: Plan) -> dict[str, Any]:
    """Steps (config, chosen layers, per-layer tables) and the main step's choice."""
    steps_meta = plan.metadata.get("steps", {})
    steps = []
    for step in plan.steps:
        meta = steps_meta.get(step.name, {})
        steps.append({
            **step.to_config(),
            "selected_layers": meta.get("selected_layers"),
            "layer_scores": meta.get("layer_scores") or [],
            "extractor": meta.get("extractor"),
            "selector": meta.get("selector"),
            "fit_positions": meta.get("fit_positions"),
            "prompts": meta.get("prompts"),
            "centroid_projections": meta.get("centroid_projections"),
        })
    main = main_step(plan)
    meta = steps_meta.get(main.name, {})
    selected = meta.get("selected_layers") or [layer for layer in main.layers if layer >= 0][:1]
    chosen = int(selected[0]) if selected else None
    selector = meta.get("selector") or {}
    return {
        "steps": steps,
        "main_step": main.name,
        "chosen_layer": chosen,
        "tau": step_tau(main),
        "selector": selector.get("name"),
        "limits": selector_limits(selector),
        "reason": selection_reason(meta, chosen),
        "num_layers": plan.model_info.get("num_layers"),
    }


# ---------------------------------------------------------------------------
# Evaluation and gates


def eval_section(
    report: EvalReport, *, steered: str, prompts: Mapping[str, Sequence[str]], source: str, generate: bool,
    max_new_tokens: int, reuse: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary table plus every per-prompt result (answers, judge verdicts, first-token scores).

    `reuse`: rows per condition that were generated (the others reused the unsteered answers, which
    they repeat bit for bit), when the evaluation reused work."""
    rows = report.rows
    first = next(iter(rows.values()))
    return {
        "prompts": {"source": source, **{k: list(v) for k, v in prompts.items()}},
        "generate": bool(generate),
        "max_new_tokens": int(max_new_tokens),
        "judge": "keyword (steerpeft.evaluation.judge.REFUSAL_PHRASES)" if generate else None,
        "baseline": report.baseline,
        "steered": steered,
        "conditions": list(rows),
        "sets": list(first),
        "table": report.table(),
        "reuse": dict(reuse) if reuse is not None else None,
        "per_prompt": {
            condition: {
                name: {"refusals": result.refusals, "scores": result.scores, "texts": result.texts}
                for name, result in results.items()
            }
            for condition, results in rows.items()
        },
    }


def gate_summary(values: torch.Tensor | Sequence[float], tau: float) -> dict[str, Any]:
    """n, mean, median, min, max, share above tau, and the values themselves."""
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if t.numel() == 0:
        return {
            "n": 0, "mean": None, "median": None, "min": None, "max": None, "above_tau": None, "values": [],
        }
    return {
        "n": int(t.numel()),
        "mean": float(t.mean()),
        "median": float(t.median()),
        "min": float(t.min()),
        "max": float(t.max()),
        "above_tau": float((t > tau).double().mean()),
        "values": [float(v) for v in t.tolist()],
    }


# ---------------------------------------------------------------------------
# The whole record


def build_metrics(
    *,
    recipe: Mapping[str, Any] | None,
    plan: Plan | None,
    model: Mapping[str, Any],
    evaluation: Mapping[str, Any] | None,
    gate: Mapping[str, Any] | None,
    adapter: Mapping[str, Any],
    timings: Mapping[str, float],
    command: str,
    files: Mapping[str, Any],
    preflight: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON-ready run record (see the module docstring); every value passes `clean`."""
    return clean({
        "format": RUN_FORMAT,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "recipe": dict(recipe) if recipe is not None else None,
        "model": dict(model),
        "versions": versions(),
        "preflight": dict(preflight) if preflight is not None else None,
        "plan": plan_section(plan) if plan is not None else None,
        "eval": dict(evaluation) if evaluation is not None else None,
        "gate": dict(gate) if gate is not None else None,
        "adapter": dict(adapter),
        "timings": {k: round(float(v), 3) for k, v in timings.items()},
        "files": dict(files),
    })


# ---------------------------------------------------------------------------
# Reading the record back


def result_rows(metrics: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """`{condition: {set: table_row}}` from a metrics dict (empty without an evaluation)."""
    evaluation = metrics.get("eval") or {}
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for row in evaluation.get("table", []):
        rows.setdefault(row["condition"], {})[row["set"]] = row
    return rows


def modalities_of(sets: Sequence[str]) -> list[str]:
    """Modalities in set-name order ("harmful/text" -> "text"), without repeats."""
    seen: list[str] = []
    for name in sets:
        modality = name.split("/", 1)[-1]
        if modality not in seen:
            seen.append(modality)
    return seen


def selector_limits(selector: Mapping[str, Any]) -> dict[str, float] | None:
    """The limits a selector held each layer to, keyed as the per-layer table's columns (for the plots)."""
    params = selector.get("params") or {}
    if selector.get("name") == "mars":
        return params.get("limits")
    if selector.get("name") == "bypass":
        return {"kl": params.get("max_kl", 0.1), "induce": params.get("min_induce", 0.0)}
    return None

