"""The plain-text summary printed at the end of a run: aligned columns, no colour, no box drawing."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from steerpeft.report.metrics import plan_warnings, result_rows


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, indent: str = "") -> str:
    """Columns padded to their widest cell; text left-aligned, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        all(_looks_numeric(row[i]) for row in cells[1:]) and len(cells) > 1 for i in range(len(headers))
    ]

    def line(row: Sequence[str]) -> str:
        parts = [cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(row, widths, numeric)]
        return (indent + "  ".join(parts)).rstrip()

    return "\n".join(
        [line(cells[0]), indent + "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]
    )


def _looks_numeric(cell: str) -> bool:
    text = cell.strip().rstrip("%")
    if text in ("", "-"):
        return True
    try:
        float(text.split(" ")[0])
    except ValueError:
        return False
    return True


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def number(value: float | None, digits: int = 4) -> str:
    """Fixed point, or scientific when a non-zero value would print as zero."""
    if value is None:
        return "-"
    if value != 0 and abs(value) < 0.5 * 10 ** -digits:
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def summary_table(metrics: Mapping[str, Any], run_dir: str | None = None) -> str:
    """Chosen layer, tau, refusal before/after and KL per set, the adapter and the run folder."""
    plan = metrics.get("plan") or {}
    model = metrics.get("model") or {}
    recipe = (metrics.get("recipe") or {}).get("name", "?")
    lines = [f"steerpeft: {recipe} on {model.get('id') or '?'}"]
    profile = metrics.get("preflight")
    if profile:
        lines.append(
            textwrap.fill(
                profile.get("verdict", ""), width=100, initial_indent=f"  {'your model':<13} ",
                subsequent_indent=" " * 16,
            )
        )
    layer = plan.get("chosen_layer")
    total = plan.get("num_layers")
    facts = (
        [("chosen layer", f"{layer}" + (f" of {total} (0-based)" if total else ""))] if layer is not None
        else []
    )
    if plan.get("tau") is not None:
        facts.append(("tau", f"{plan['tau']:.3f}"))
    facts += [("warning", warning) for warning in plan_warnings(plan)]
    lines += [f"  {k:<13} {v}" for k, v in facts]
    if plan.get("reason"):
        lines.append(textwrap.fill(plan["reason"], width=100, initial_indent=f"  {'why':<13} ",
                                   subsequent_indent=" " * 16))
    evaluation = metrics.get("eval")
    if evaluation:
        rows = result_rows(metrics)
        baseline, steered = evaluation["baseline"], evaluation["steered"]
        generated = evaluation.get("generate", True)
        headers = ["set", "n", "refusal before", "refusal after", "KL after"] if generated else \
            ["set", "n", "first-token score before", "after", "KL after"]
        table_rows = []
        for name in evaluation["sets"]:
            before, after = rows[baseline][name], rows[steered][name]
            if generated:
                cells = [percent(before["refusal_rate"]), percent(after["refusal_rate"])]
            else:
                cells = [number(before["first_token_score"], 2), number(after["first_token_score"], 2)]
            table_rows.append([name, before["n"], *cells, number(after["kl"])])
        lines += ["", text_table(headers, table_rows, indent="  ")]
        if generated:
            lines.append("  (refusal on harmful sets: higher is safer; on harmless sets it is over-refusal: "
                         "lower is better; KL in nats)")
    adapter = metrics.get("adapter") or {}
    if adapter.get("status") == "exported":
        path = adapter.get("path")
        shown = (
            str(Path(run_dir) / path) if run_dir is not None and path and not Path(path).is_absolute()
            else path
        )
        lines.append(f"\n  adapter: {shown} (kind {adapter.get('kind', '?')}; load with "
                     "steerpeft.adapters.load_adapter(model, path))")
    elif adapter.get("status") == "evaluated":
        lines.append(f"\n  adapter: {adapter.get('path')} (evaluated)")
    elif adapter.get("status"):
        lines.append(f"\n  adapter: not exported ({adapter.get('status')}: {adapter.get('message', '')})")
    timings = metrics.get("timings") or {}
    if timings.get("total_s") is not None:
        stages = ", ".join(f"{key.removesuffix('_s').replace('_', ' ')} {value:.1f} s"
                           for key, value in timings.items() if key != "total_s")
        lines.append(f"  wall time: {timings['total_s']:.1f} s" + (f" ({stages})" if stages else ""))
    if run_dir is not None:
        lines.append(f"  run folder: {run_dir}  (report.md, metrics.json, plots)")
    return "\n".join(lines)
