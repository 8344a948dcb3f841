"""Reading `validate_mars.py`'s results: the rows of a model's table, rises, gate-open shares, the gate
ceiling.

Pure functions over the cached JSON (nothing is loaded or run), shared by the report and its summary.
"""

from __future__ import annotations

from typing import Any


def conditions(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Condition -> {"sets", "fit", "gate", "raw_gate", "eval_s"}: every row of the model's table, in
    order."""
    evals, fits = model["evals"], model["fits"]
    main = evals["mars"]
    found: dict[str, dict[str, Any]] = {}
    order = [
        "unsteered",
        "mars",
        "mars-md",
        "mars-refused",
        "mars (no re-centering)",
        "mars (fixed strength)",
        "mars (all tokens)",
        "ablation",
        "ablation-kl0.2",
        "ablation-arditi",
        "ablation-arditi-kl0.2",
        "ablation-arditi-kl1",
    ]
    for name in order:
        if name in main["rows"]:
            source = main
        elif name in evals and name in evals[name]["rows"]:
            source = evals[name]
        else:
            continue
        fit = fits.get(name) or (fits["mars"] if name.startswith("mars (") else None)
        gate = (
            source.get("gate")
            if name in ("mars", "mars-md", "mars-refused", "mars (no re-centering)")
            else None
        )
        found[name] = {
            "sets": source["rows"][name],
            "fit": fit,
            "gate": gate,
            "raw_gate": name.endswith("re-centering)"),
            "eval_s": source.get("eval_s") if source is not main or name == "mars" else None,
        }
    return found


def rate(cell: dict[str, Any] | None) -> float | None:
    return None if cell is None else cell.get("rate")


def rise(rows: dict[str, dict[str, Any]], condition: str, set_name: str) -> float | None:
    """Over-refusal rise in points over the unsteered model on the same set."""
    mine, base = rate(rows[condition]["sets"].get(set_name)), rate(rows["unsteered"]["sets"].get(set_name))
    return None if mine is None or base is None else 100.0 * (mine - base)


def gate_open(row: dict[str, Any], set_name: str) -> float | None:
    gate = row.get("gate") or {}
    entry = (gate.get("sets") or {}).get(set_name)
    if entry is None:
        return None
    part = entry["raw"] if row["raw_gate"] and entry.get("raw") else entry["recentered"]
    return part["above_tau"]


def ceiling(model: dict[str, Any], set_name: str) -> dict[str, Any] | None:
    """The gate ceiling of the shipped plan on one harmful set: open rows, plus closed rows the model
    already refuses."""
    main = model["evals"]["mars"]
    entry = ((main.get("gate") or {}).get("sets") or {}).get(set_name)
    if entry is None:
        return None
    tau, values = main["gate"]["tau"], entry["recentered"]["values"]
    opened = [t > tau for t in values]
    base, steered = (
        main["rows"]["unsteered"][set_name]["refusals"],
        main["rows"]["mars"][set_name]["refusals"],
    )
    n, n_open = len(values), sum(opened)
    closed_refused = sum(1 for o, r in zip(opened, base) if not o and r)
    open_refused = sum(1 for o, r in zip(opened, steered) if o and r)
    return {"n": n, "open": n_open, "closed_refused": closed_refused, "open_refused": open_refused,
            "ceiling": (n_open + closed_refused) / n, "closed_rate": closed_refused / max(1, n - n_open),
            "open_rate": open_refused / max(1, n_open)}


def source_gate(model: dict[str, Any], set_name: str) -> dict[str, str]:
    """Gate-open count per prompt source of one set under the shipped plan: where the gate's recall is."""
    gate = model["evals"]["mars"].get("gate") or {}
    entry = (gate.get("sets") or {}).get(set_name)
    if entry is None:
        return {}
    sources = model["prompts"][f"{set_name.split('/')[0]}_source"]
    values = entry["recentered"]["values"]
    return {
        src: f"{sum(values[i] > gate['tau'] for i, s in enumerate(sources) if s == src)}/{sources.count(src)}"
        for src in dict.fromkeys(sources)
    }
