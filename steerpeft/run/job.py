"""The main job: fit a recipe, evaluate it, export the adapter, write the report.

`run_recipe` is what `steerpeft run` does, callable from Python.  It drives one lifecycle that
callbacks observe (`steerpeft.callbacks.base` lists the hooks):

1. load the model named by the recipe's `model` section (or use the one given);
2. preflight: the unsteered model's own refusal on the held-out prompts (first-token log-odds on
   all, judged answers on a sample), shown first in the report;
3. fit every step (`on_fit_*` hooks: progress bars, the JSONL log `metrics.jsonl`), save `plan/`;
4. evaluate on the test split the fit held out (`Recipe.split_prompts`, the very
   same seeded split), text-only and, for vision-language models, with neutral images
   and videos: the unsteered model, the plan, and for MARS plans its ablations
   (`on_evaluate_*` hooks); for MARS plans, the gate value t of every evaluation input;
5. `on_run_end`: the export stage writes the PEFT adapter (`adapter/`), then the report stage
   writes `metrics.json` (every number), `report.md` and the plots (`steerpeft.run.stages`).

A failure in any stage calls `on_exception` on every callback before it propagates.  Every file
is written atomically (temporary sibling, then rename), so an interrupted run never leaves a
half-written file; `metrics.json` is written last.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerpeft.callbacks import Callback, JsonlLogger, ProgressBar, call_hook, stage
from steerpeft.errors import ConfigError
from steerpeft.evaluation.preflight import refusal_profile
from steerpeft.io import atomic_write_text
from steerpeft.models import load_model
from steerpeft.recipes import Recipe, load_recipe
from steerpeft.report.metrics import eval_section
from steerpeft.run.evaluation import eval_batch_size, eval_prompts, evaluate_plan, model_section
from steerpeft.run.folder import check_run_dir, default_run_dir, say
from steerpeft.run.stages import AdapterExport, ReportWriter
from steerpeft.run.state import RunResult, RunState


@dataclass
class RunJob:
    """The runner callbacks see during `run_recipe` and `evaluate_saved` (outside the fit itself)."""

    name: str
    callbacks: list[Callback] = field(default_factory=list)

    def call(self, hook: str, **kwargs: Any) -> None:
        call_hook(self.callbacks, self, hook, **kwargs)


def load_recipe_model(recipe: Recipe, device: str | None = None) -> tuple[Any, Any]:
    """The model and processor named by the recipe's `model` section (`device` overrides `model.device`)."""
    model = recipe.section("model")
    return load_model(model.name, dtype=model.dtype, device=device or model.device, revision=model.revision)


def command_line(command: str | None) -> str:
    """The command recorded in the report: `command`, else this process's command line."""
    if command is not None:
        return command
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("steerpeft", "__main__.py", "cli.py"):
        argv[0] = "steerpeft"
    return shlex.join(argv)


def run_recipe(
    recipe: Recipe | str | Mapping[str, Any],
    *,
    out_dir: str | os.PathLike | None = None,
    model: Any = None,
    processor: Any = None,
    progress: bool = True,
    export: bool = True,
    plots: bool = True,
    device: str | None = None,
    overrides: Sequence[str] = (),
    command: str | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Fit `recipe`, evaluate the plan, export the adapter and write the report into a run folder.

    `recipe`: a `Recipe`, a built-in name, a YAML path or a dict (`overrides` are applied on top).
    `out_dir`: the run folder; default the recipe's `output.dir`, else `runs/<recipe>-<timestamp>`.
    `model` / `processor`: use this model instead of loading the recipe's `model.name`
    (its tokenizer for text models, its processor for vision-language models).
    `export` / `plots`: False skips that part; the recipe's `output.export` / `output.plots`
    can switch them off too.  `device` overrides the recipe's `model.device`.
    `command`: recorded in the report (default: this process's command line).
    `callbacks`: more callbacks, called after the progress bar and the log, before export and report.
    """
    started = time.perf_counter()
    recipe = (
        recipe.with_overrides(overrides) if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    )  # type: ignore[arg-type]
    if (model is None) != (processor is None):
        raise ConfigError("Pass both model= and processor= (the tokenizer for a text model), or neither.")
    recipe.steerers()  # build every component now: a bad option fails before the model loads
    options, output = recipe.section("eval"), recipe.section("output")
    harmful, harmless, source = eval_prompts(recipe)
    out = check_run_dir(out_dir or output.dir or default_run_dir(recipe.name))
    log = out / "metrics.jsonl"
    log.unlink(missing_ok=True)  # a fresh log for this run
    stages: list[Callback] = []
    if export and output.export:
        stages.append(AdapterExport(progress=progress))
    stages.append(ReportWriter(plots=bool(plots and output.plots), progress=progress, replaces_adapter=True))
    job = RunJob(
        recipe.name,
        [ProgressBar(disable=None if progress else True), JsonlLogger(str(log)), *callbacks, *stages],
    )
    timings: dict[str, float] = {}
    with stage(job.callbacks, job, "run"):
        job.call("on_run_start", out_dir=out)
        say(progress, f"steerpeft: recipe {recipe.name!r}, run folder {out}")
        if model is None:
            say(progress, "[1/6] loading the model ...")
            tick = time.perf_counter()
            model, processor = load_recipe_model(recipe, device)
            timings["load_model_s"] = time.perf_counter() - tick
        atomic_write_text(out / "recipe.yaml", recipe.to_yaml())

        say(progress, "[2/6] preflight: how often does the model refuse on its own? ...")
        tick = time.perf_counter()
        profile = refusal_profile(model, processor, harmful, harmless, batch_size=eval_batch_size(recipe),
                                  max_new_tokens=options.max_new_tokens)
        timings["preflight_s"] = time.perf_counter() - tick
        say(progress, f"        {profile.verdict()}")

        say(progress, "[3/6] fitting (recording activations, scoring layers) ...")
        tick = time.perf_counter()
        plan = recipe.fit(model, processor, callbacks=job.callbacks)
        plan.save(out / "plan")
        timings["fit_s"] = time.perf_counter() - tick

        say(progress, f"[4/6] evaluating on {len(harmful)} harmful + {len(harmless)} harmless prompts ...")
        tick = time.perf_counter()
        report, gate, modalities, reuse = evaluate_plan(
            plan, model, processor, harmful, harmless, name=recipe.name, options=options,
            batch_size=eval_batch_size(recipe), media=recipe.section("media"), progress=progress,
            callbacks=job.callbacks, runner=job,
        )
        timings["eval_s"] = time.perf_counter() - tick

        state = RunState(
            out_dir=out, name=recipe.name,
            recipe={"name": recipe.name, "source": recipe.source, "config": recipe.config}, model=model,
            processor=processor, plan=plan, report=report, gate=gate,
            model_record=model_section(model, modalities), prompts={"harmful": harmful, "harmless": harmless},
            prompt_source=source,
            eval_record=eval_section(
                report, steered=recipe.name, prompts={"harmful": harmful, "harmless": harmless},
                source=source, generate=options.generate, max_new_tokens=options.max_new_tokens, reuse=reuse,
            ),
            command=command_line(command), started=started, timings=timings, preflight=profile.to_dict(),
            files_record={
                "plan": "plan", "log": "metrics.jsonl", "recipe": "recipe.yaml", "report": "report.md",
                "metrics": "metrics.json", "plots": {},
            },
        )
        job.call("on_run_end", run=state)
    files = dict(state.files)
    files.update({"plan": out / "plan", "log": log, "recipe": out / "recipe.yaml"})
    if state.adapter_dir is not None:
        files["adapter"] = state.adapter_dir
    return RunResult(out, plan, state.metrics, report, state.adapter_dir, files)
