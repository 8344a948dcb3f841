"""The stages after fit and evaluation, written as callbacks on `on_run_end`: export, then report.

A run lists them after its progress and logging callbacks, so they run in that order: the
report shows the export's status.  Each writes atomically; a failed export is recorded in the
report (the run itself goes on), a failed report stops the run with the error.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerpeft.adapters import export_adapter
from steerpeft.callbacks import Callback, Runner
from steerpeft.errors import SteerpeftError
from steerpeft.evaluation import EvalReport
from steerpeft.io import atomic_write_text, read_adapter_meta
from steerpeft.plan import Plan
from steerpeft.report.markdown import render_report
from steerpeft.report.metrics import build_metrics
from steerpeft.report.plots import render_plots
from steerpeft.run.folder import PLOT_FILES, say
from steerpeft.run.state import RunState


def export_plan(
    plan: Plan, model: Any, path: str | os.PathLike, *, kind: str = "auto", strict: bool = False,
    root: str | os.PathLike | None = None, card: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Export `plan` as a PEFT adapter into `path`; a status dict for the report.

    `strict=False` (the run): an export error is recorded ("failed" with the message) and the run
    goes on.  `strict=True` (the `export` command) raises it.  `card` adds fields to the model card.
    """
    shown = os.path.relpath(path, root) if root is not None else str(path)
    try:
        export_adapter(plan, model, path, kind=kind, card=dict(card) if card else None)
    except SteerpeftError as exc:
        if strict:
            raise
        return {"status": "failed", "message": str(exc), "kind": kind}
    info: dict[str, Any] = {"status": "exported", "path": shown, "kind": kind, "message": ""}
    with contextlib.suppress(OSError, ValueError):  # the exporter's own record: the kind it chose, exactness
        recorded = read_adapter_meta(path)
        info.update({k: recorded[k] for k in ("kind", "exact", "mergeable") if k in recorded})
    with contextlib.suppress(OSError, ValueError):
        info["peft_type"] = json.loads(
            (Path(path) / "adapter_config.json").read_text(encoding="utf-8")).get("peft_type")
    return info


def adapter_card(recipe_name: str, report: EvalReport) -> dict[str, Any]:
    """A model-card description with the evaluation's headline numbers (text sets)."""
    rows = report.rows
    baseline, steered = report.baseline, recipe_name
    parts = []
    for name in ("harmful/text", "harmless/text"):
        before, after = rows[baseline].get(name), rows.get(steered, {}).get(name)
        if before is None or after is None or before.refusal_rate is None or after.refusal_rate is None:
            continue
        what = (
            "refusal on harmful prompts" if name.startswith("harmful") else "over-refusal on harmless prompts"
        )
        parts.append(f"{what} {before.refusal_rate:.0%} -> {after.refusal_rate:.0%}")
    kl = rows.get(steered, {}).get("harmless/text")
    if kl is not None and kl.kl is not None:
        parts.append(f"first-token KL on harmless prompts {kl.kl:.4f} nats")
    text = f"Fitted with steerpeft's `{recipe_name}` recipe."
    if parts:
        n = rows[baseline]["harmful/text"].n
        text += f" Evaluation on {n} held-out prompts per set (keyword judge): " + "; ".join(parts) + "."
    return {"description": text}


def write_outputs(
    out: Path, metrics: dict[str, Any], *, plots: bool, started: float | None = None
) -> dict[str, Path]:
    """Plots, then report.md and metrics.json (last), each written atomically; returns their paths.

    `started` (a `time.perf_counter()` value) sets `timings.total_s`; the time spent here is `report_s`.
    """
    tick = time.perf_counter()
    made = render_plots(metrics, out) if plots else {}
    for stale in set(PLOT_FILES) - set(made.values()):
        (out / stale).unlink(missing_ok=True)  # an earlier run's plot here would not match this report
    metrics["files"]["plots"] = made
    metrics["timings"]["report_s"] = round(time.perf_counter() - tick, 3)
    if started is not None:
        metrics["timings"]["total_s"] = round(time.perf_counter() - started, 3)
    atomic_write_text(out / "report.md", render_report(metrics))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    files = {name: out / file for name, file in made.items()}
    files.update({"report": out / "report.md", "metrics": out / "metrics.json"})
    return files



@dataclass
class AdapterExport(Callback):
    """Stage 5 of a run: export the plan as a PEFT adapter into `<run>/adapter`."""

    progress: bool = True

    def on_run_end(self, runner: Runner, run: Any) -> None:
        state: RunState = run
        if state.plan is None or state.report is None:
            return
        say(self.progress, "[5/6] exporting the adapter ...")
        tick = time.perf_counter()
        state.adapter = export_plan(state.plan, state.model, state.out_dir / "adapter", root=state.out_dir,
                                    card=adapter_card(state.name, state.report))
        state.timings["export_s"] = time.perf_counter() - tick
        if state.adapter["status"] == "exported":
            state.adapter_dir = state.out_dir / "adapter"
            state.files_record["adapter"] = "adapter"
        else:
            say(self.progress, f"        adapter not exported: {state.adapter['message']}")


@dataclass
class ReportWriter(Callback):
    """Stage 6 of a run: metrics.json, report.md and the plots.

    `replaces_adapter`: this run owns `<run>/adapter`, so an earlier run's adapter left there (which
    would not match the new plan) is removed when this run exported none.
    """

    plots: bool = True
    progress: bool = True
    replaces_adapter: bool = False

    def on_run_end(self, runner: Runner, run: Any) -> None:
        state: RunState = run
        if self.replaces_adapter and state.adapter_dir is None and (state.out_dir / "adapter").exists():
            shutil.rmtree(state.out_dir / "adapter", ignore_errors=True)
        say(self.progress, "[6/6] writing the report ...")
        state.metrics = build_metrics(
            recipe=state.recipe, plan=state.plan, model=state.model_record, evaluation=state.eval_record,
            gate=state.gate, adapter=state.adapter, timings=state.timings, command=state.command,
            files=state.files_record, preflight=state.preflight,
        )
        state.files.update(
            write_outputs(state.out_dir, state.metrics, plots=self.plots, started=state.started)
        )
