"""The run report (`report.md`), rendered from a metrics dict only.

Sections: what was fitted, which layer and why (with the per-layer table and plot),
results (refusal on harmful inputs, over-refusal on harmless inputs and KL, per
modality, with ablation rows), gate values, how to use the adapter or plan, caveats,
files.  Paths are relative to the run folder, so the folder can be moved or shared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from steerpeft.models import EMBEDDED_MODEL_ID
from steerpeft.report.metrics import limits_cell, modalities_of, result_rows

ABLATION_NOTES = {
    "no re-centering": "the gate ignores the modality offsets (tau unchanged)",
    "fixed strength": "no gate: every input gets the full centroid gap p+ - p- along u (whatever the target)",
    "all tokens": "the same gated update at every token, not only the first generated one",
}


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(headers) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if value != 0 and abs(value) < 10 ** -digits:
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def _load_call(model_id: str) -> str:
    if model_id == EMBEDDED_MODEL_ID:
        return "load_model()  # the embedded SmolLM2-135M-Instruct"
    if not model_id or model_id.startswith("unnamed-"):
        return 'load_model("<the model this was fitted on>")'
    return f"load_model({model_id!r})"


def _header(metrics: Mapping[str, Any]) -> list[str]:
    recipe = metrics.get("recipe") or {}
    model = metrics.get("model") or {}
    timings = metrics.get("timings") or {}
    plan = metrics.get("plan") or {}
    main = next((s for s in plan.get("steps", []) if s.get("name") == plan.get("main_step")), {})
    prompts = main.get("prompts") or {}
    config = recipe.get("config") or {}
    data = config.get("data") or {}
    lines = [f"# steerpeft run: {recipe.get('name', 'plan')}", ""]
    if config.get("description"):
        lines += [f"_{config['description']}_", ""]
    lines.append(f"- **Model**: `{model.get('id', '?')}` ({model.get('type', '?')}, "
                 f"{model.get('num_layers', '?')} layers, hidden size {model.get('hidden_size', '?')}), "
                 f"{model.get('dtype', '?')} on {model.get('device', '?')}; "
                 f"inputs: {', '.join(model.get('modalities') or ['text'])}")
    if recipe:
        lines.append(f"- **Recipe**: `{recipe.get('name')}` from `{recipe.get('source')}`; the resolved "
                     "recipe is saved as `recipe.yaml` (run it again with `steerpeft run recipe.yaml`)")
    if prompts:
        lines.append(f"- **Data**: {data.get('positive', 'positive')} vs {data.get('negative', 'negative')}: "
                     f"fitted on {prompts.get('positive', 0)} harmful / {prompts.get('negative', 0)} "
                     f"harmless prompts, {prompts.get('positive_validation', 0)} / "
                     f"{prompts.get('negative_validation', 0)} for validation (layer, threshold, target)")
    if metrics.get("command"):
        lines.append(f"- **Command**: `{metrics['command']}`")
    if timings:
        parts = ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f} s"
                          for k, v in timings.items() if k != "total_s")
        lines.append(f"- **Wall time**: {timings.get('total_s', 0):.1f} s ({parts})")
    versions = metrics.get("versions") or {}
    if versions:
        lines.append("- **Versions**: "
                     + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "platform"))
    return lines + [""]


def _preflight(metrics: Mapping[str, Any]) -> list[str]:
    profile = metrics.get("preflight")
    if not profile:
        return []

    def judged(label: str) -> str:
        rate = profile.get(f"{label}_refused")
        return "-" if rate is None else f"{_pct(rate)} of {profile.get(f'{label}_judged')}"

    rows = [[label, profile.get(f"{label}_n"), _num(profile.get(f"{label}_log_odds"), 2),
             _pct(profile.get(f"{label}_positive")), judged(label)] for label in ("harmful", "harmless")]
    return ["## Your model before steering", "", f"**{profile.get('verdict', '')}**", "",
            _table(["held-out text prompts", "n", "mean first-token refusal log-odds", "log-odds > 0",
                    "judged answers refused"], rows, ["l", "r", "r", "r", "r"]), "",
            ("Measured before fitting, on the same held-out prompts as the results below: the log-odds on "
             "every prompt (one forward pass), the keyword judge on a sample of answers."), ""]


def _fitted(metrics: Mapping[str, Any]) -> list[str]:
    plan = metrics.get("plan") or {}
    lines = ["## What was fitted", ""]
    for step in plan.get("steps", []):
        extractor = (step.get("extractor") or {}).get("name", "?")
        intervention = step.get("intervention") or {}
        scaler = step.get("scaler") or {}
        positions = (step.get("positions") or {}).get("kind", "?")
        layers = [layer for layer in step.get("layers", []) if layer >= 0]
        where = (f"layer {layers[0]}" if len(layers) == 1
                 else f"{len(layers)} layers ({layers[0]}..{layers[-1]})") if layers else "the embedding"
        params = ", ".join(f"{k}={v}" for k, v in (scaler.get("params") or {}).items())
        ivars = ", ".join(f"{k}={v}" for k, v in (intervention.get("params") or {}).items())
        lines.append(f"- Step `{step.get('name')}`: a `{extractor}` direction (harmful minus harmless "
                     f"activations at the {(step.get('fit_positions') or {}).get('kind', 'decision')} "
                     f"position), steered at {where} with "
                     f"`{intervention.get('name', '?')}`{f' ({ivars})' if ivars else ''} at `{positions}` "
                     f"positions; strength from `{scaler.get('name', '?')}`"
                     f"{f' ({params})' if params else ''}.")
    if plan.get("tau") is not None:
        lines += ["", (f"The gate threshold is **tau = {plan['tau']:.3f}** (in units of the "
                      "harmless-to-harmful centroid distance: inputs with t <= tau are left exactly "
                      "unchanged).")]
        lines += _target_sentence(plan)
    return lines + [""]


def _target_sentence(plan: Mapping[str, Any]) -> list[str]:
    """Where the traversal ends at the chosen layer, and whether the calibrated target was reachable."""
    main = next((s for s in plan.get("steps", []) if s.get("name") == plan.get("main_step")), {})
    row = next((r for r in main.get("layer_scores") or [] if r.get("chosen")), None)
    if row is None or row.get("target") is None:
        return []
    if "target_reached" not in row:
        return ["", (f"An open gate carries the input to **T = {row['target']:.2f}** "
                     "(1 = the harmful centroid).")]
    if row["target_reached"]:
        return ["", (f"An open gate carries the input to **T = {row['target']:.2f}**, where the model's own "
                f"first token is a refusal opening on {row['target_share']:.0%} of the fit harmful prompts "
                "(1 = the harmful centroid).")]
    return ["", ("**The calibrated target was not reachable**: no level up to 5 spans made the model open "
            f"with a refusal often enough (at most {row['target_share']:.0%} of the fit harmful prompts), so "
            "an open gate carries the input to the harmful centroid (T = 1), as MARS.md does.")]


def _layers(metrics: Mapping[str, Any], plots: Mapping[str, str]) -> list[str]:
    plan = metrics.get("plan") or {}
    main = next((s for s in plan.get("steps", []) if s.get("name") == plan.get("main_step")), {})
    table = main.get("layer_scores") or []
    lines = ["## Chosen layer and why", "", (f"**Layer {plan.get('chosen_layer')}** "
             f"(of {plan.get('num_layers', '?')}). {plan.get('reason', '')}"), ""]
    if "layers" in plots:
        lines += [f"![Per-layer scores]({plots['layers']})", ""]
    if "trade" in plots:
        lines += [f"![Refusal removed against harmless answers changed]({plots['trade']})", ""]
    if table:
        columns = [
            c
            for c in (
                "separation",
                "accuracy",
                "bypass",
                "induce",
                "kl",
                "false_trigger",
                "tau",
                "target",
                "refusal",
                "t_harmful_mean",
                "t_harmless_mean",
            )
            if any(c in r for r in table)
        ]
        names = {
            "separation": "separation (AUROC)",
            "bypass": "bypass",
            "induce": "induce",
            "kl": "KL (nats)",
            "false_trigger": "false-trigger",
            "tau": "tau",
            "t_harmful_mean": "mean t harmful",
            "t_harmless_mean": "mean t harmless",
            "accuracy": "accuracy",
            "target": "target T",
            "refusal": "refused (validation harmful)",
        }
        gated = any("within_limits" in r for r in table)
        headers = ["layer"] + [names[c] for c in columns] + (["within limits"] if gated else []) + ["chosen"]
        rows = []
        for r in sorted(table, key=lambda r: r["layer"]):
            cells: list[Any] = [r["layer"]]
            for c in columns:
                value = r.get(c)
                cells.append(_pct(value) if c in ("false_trigger", "refusal") else _num(value, 3))
            if gated:
                cells.append(limits_cell(r))
            cells.append("**<-**" if r.get("chosen") else "")
            rows.append(cells)
        lines += [("Scores on the validation prompts, per candidate layer: separation is the AUROC of the "
                  "gate value t between harmful and harmless prompts; induce is the mean rise of the "
                  "first-token refusal log-odds on harmless prompts when their state is pushed to the "
                  "harmful centroid; KL is the first-token KL on harmless prompts under the gated steering; "
                  "false-trigger is the share of held-out harmless inputs (text only and with neutral media) "
                  "whose gate opens at that layer's tau; target T is where an open gate carries an input, "
                  "and refused is the share of validation harmful prompts whose first token is a refusal "
                  "opening under that layer's gate. A dash: not measured, because a cheaper score already "
                  "excluded the layer."),
                  "", _table(headers, rows, ["r"] * len(headers)), ""]
    return lines


def _results(metrics: Mapping[str, Any], plots: Mapping[str, str]) -> list[str]:
    evaluation = metrics.get("eval")
    if not evaluation:
        return ["## Results", "", "No evaluation was run.", ""]
    rows = result_rows(metrics)
    sets = evaluation["sets"]
    modalities = modalities_of(sets)
    generated = evaluation.get("generate", True)
    lines = ["## Results", ""]
    source = (evaluation.get("prompts") or {}).get("source", "")
    lines.append(f"Evaluated on {source}. " + (
        f"Answers are greedy, at most {evaluation.get('max_new_tokens')} new tokens, judged by keyword "
        "(an answer containing a refusal phrase counts as a refusal)." if generated else
        "Generation was off: only first-token scores and KL were measured."))
    reuse = evaluation.get("reuse")
    if reuse and generated:
        counts = ", ".join(f"{condition} {count}" for condition, count in reuse["generated"].items())
        lines.append("Rows a decision-position plan cannot change (a closed gate) reuse the unsteered "
                     "answer, which they would repeat bit for bit; rows generated per condition, of "
                     f"{reuse['rows']}: {counts}.")
    lines.append("")
    titles = {"text": "Text only", "image": "Text + neutral image", "video": "Text + neutral video"}
    for modality in modalities:
        headers = ["condition"]
        if generated:
            headers += ["refusal on harmful (higher = safer)", "over-refusal on harmless (lower = better)"]
        headers += ["KL on harmless (nats)"]
        table_rows = []
        for condition in evaluation["conditions"]:
            by_set = rows[condition]
            cells: list[Any] = [f"**{condition}**" if condition == evaluation["steered"] else condition]
            if generated:
                cells += [_pct(by_set.get(f"harmful/{modality}", {}).get("refusal_rate")),
                          _pct(by_set.get(f"harmless/{modality}", {}).get("refusal_rate"))]
            cells.append(_num(by_set.get(f"harmless/{modality}", {}).get("kl"), 4))
            table_rows.append(cells)
        if len(modalities) > 1:
            lines += [f"**{titles.get(modality, modality)}**", ""]
        lines += [_table(headers, table_rows), ""]
    notes = [f"- `{evaluation['baseline']}`: the model as it is.",
             f"- `{evaluation['steered']}`: the fitted plan."]
    for condition in evaluation["conditions"]:
        for label, note in ABLATION_NOTES.items():
            if condition.endswith(f"({label})"):
                notes.append(f"- `{condition}`: ablation, {note}.")
    lines += notes + [""]
    if "refusal" in plots:
        lines += [f"![Refusal rates]({plots['refusal']})", ""]
    score_rows = []
    for condition in evaluation["conditions"]:
        score_rows.append([condition] + [_num(rows[condition][s]["first_token_score"], 2) for s in sets])
    lines += [("First-token refusal score (mean log-odds of opening with a refusal token; one forward pass, "
              "no generation):"), "", _table(["condition", *sets], score_rows), ""]
    return lines


def _gate(metrics: Mapping[str, Any], plots: Mapping[str, str]) -> list[str]:
    gate = metrics.get("gate")
    if not gate:
        return []
    lines = ["## Gate values", "", (f"The gate value t of every evaluation input at layer {gate['layer']} "
             "(0 = harmless centroid, 1 = harmful centroid); "
             f"the gate opens where t > tau = {gate['tau']:.3f}."), ""]
    if any(both.get("raw") for both in gate["sets"].values()):
        lines[-2] += (" Inputs with media are measured after subtracting the modality offset (re-centering); "
                      "the last two columns show them without it.")
    if "gate" in plots:
        lines += [f"![Gate values]({plots['gate']})", ""]
    rows = []
    for name, both in gate["sets"].items():
        summary, raw = both["recentered"], both.get("raw")
        rows.append([name, summary["n"], _num(summary["mean"]), _pct(summary["above_tau"]),
                     _num(raw["mean"]) if raw else "–", _pct(raw["above_tau"]) if raw else "–"])
    lines += [_table(["set", "n", "mean t", "share t > tau", "mean t, no re-centering",
                      "share > tau, no re-centering"], rows), ""]
    return lines


def _usage(metrics: Mapping[str, Any]) -> list[str]:
    model_id = (metrics.get("model") or {}).get("id", "")
    adapter = metrics.get("adapter") or {}
    files = metrics.get("files") or {}
    lines = ["## Using the result", ""]
    load = _load_call(model_id)
    if adapter.get("status") == "exported":
        path = adapter.get("path")
        kind = adapter.get("kind", "?")
        exact = {True: ", exact", False: ", approximate: see its README.md"}.get(adapter.get("exact"), "")
        lines += [(f"The adapter (`{path}/`, kind `{kind}`{exact}) steers the model without the plan's "
                   "hooks; its `README.md` is the model card."), "", "```python",
                  "from steerpeft.adapters import load_adapter", "from steerpeft.models import load_model",
                  "", f"model, tokenizer = {load}", f"model = load_adapter(model, \"{path}\")  # a PeftModel",
                  "```", ""]
        if kind == "lora":
            lines += ["It is a plain PEFT LoRA adapter, so PEFT alone loads it too:", "", "```python",
                      "from peft import PeftModel", "",
                      f"model = PeftModel.from_pretrained(model, \"{path}\")", "```", ""]
        elif kind == "steer":
            lines += [("It is a STEER adapter (a PEFT method steerpeft registers): `import steerpeft` before "
                      "`PeftModel.from_pretrained`, or use `load_adapter` as above."), ""]
    elif adapter.get("status") == "evaluated":
        lines += [(f"The evaluated adapter (`{adapter.get('path')}`) loads with "
                  f"`model = load_adapter(model, \"{adapter.get('path')}\")` "
                  "(from `steerpeft.adapters`)."), ""]
    else:
        lines += [(f"No adapter was exported ({adapter.get('status', 'skipped')}: "
                  f"{adapter.get('message', '')}). "
                  f"Export one with `steerpeft export {files.get('plan', 'plan')} --out adapter`."), ""]
    if not files.get("plan"):
        return lines
    lines += ["The plan itself applies with hooks, inside a `with` block:", "", "```python",
              "from steerpeft import Plan", "from steerpeft.models import load_model", "",
              f"model, tokenizer = {load}",
              f"plan = Plan.load(\"{files.get('plan', 'plan')}\")", "with plan.apply(model):",
              "    ...  # generate as usual: steering is active here", "```", "",
              (f"`steerpeft info {files.get('plan', 'plan')}` describes it; "
              f"`steerpeft eval {files.get('plan', 'plan')}` evaluates it again."), ""]
    return lines


def _caveats(metrics: Mapping[str, Any]) -> list[str]:
    lines = ["## Caveats", "",
             ("- The keyword judge is coarse: it misses refusals worded differently and flags the rare "
              "helpful answer containing a refusal phrase. Compare rows; do not read the rates as exact.")]
    evaluation = metrics.get("eval") or {}
    n = next(iter(evaluation.get("table", [])), {}).get("n")
    if n is not None and n < 50:
        lines.append(f"- Only {n} prompts per set: one prompt moves a rate by {100 / n:.0f} points.")
    plan = metrics.get("plan") or {}
    tau = plan.get("tau")
    main = next((s for s in plan.get("steps", []) if s.get("name") == plan.get("main_step")), {})
    form = ((main.get("scaler") or {}).get("params") or {}).get("form")
    if tau is not None and tau >= 1 and form == "traversal":
        lines.append(f"- tau = {tau:.3f} is at or past the harmful centroid (t = 1): the gate only opens for "
                     "inputs that already project beyond the harmful centroid, where the traversal update "
                     "ReLU(p+ - <h, u>) is zero, so this plan changes (almost) nothing. The held-out "
                     "harmless prompts spread too far along the direction at this layer; try more prompts, a "
                     "lower steps.0.scaler.tau_quantile, or steps.0.scaler.form=beta.")
    rows = result_rows(metrics)
    baseline = rows.get(evaluation.get("baseline", ""), {})
    harmful = [r["refusal_rate"] for s, r in baseline.items()
               if s.startswith("harmful") and r.get("refusal_rate") is not None]
    if harmful and max(harmful) < 0.2:
        lines.append("- The unsteered model rarely refuses harmful prompts, so a refusal direction can be "
                     "measured (separation) while steering along it changes little behaviour: small models "
                     "often never learned to refuse.")
    return lines + [""]


def _files(metrics: Mapping[str, Any]) -> list[str]:
    files = metrics.get("files") or {}
    described = {"plan": "the fitted plan (`Plan.load`)", "adapter": "the PEFT adapter",
                 "metrics": "every number of this report, with per-prompt answers",
                 "log": "fit events, one JSON line each", "recipe": "the resolved recipe",
                 "report": "this report"}
    lines = ["## Files", ""]
    for key, note in described.items():
        if files.get(key):
            lines.append(f"- `{files[key]}`: {note}")
    for name in (files.get("plots") or {}).values():
        lines.append(f"- `{name}`: plot")
    return lines + [""]


def render_report(metrics: Mapping[str, Any]) -> str:
    """The markdown report of a run (or of a plan evaluation) from its metrics dict."""
    plots = (metrics.get("files") or {}).get("plots") or {}
    sections = [_header(metrics), _preflight(metrics), _fitted(metrics), _layers(metrics, plots),
                _results(metrics, plots), _gate(metrics, plots), _usage(metrics), _caveats(metrics),
                _files(metrics)]
    return "\n".join(line for section in sections for line in section).rstrip() + "\n"
