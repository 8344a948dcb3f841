"""`steerpeft eval`: a saved plan, run folder or adapter, evaluated as a run evaluates its fresh plan."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from steerpeft.adapters import load_adapter
from steerpeft.callbacks import Callback, ProgressBar, stage
from steerpeft.errors import ConfigError, SteerpeftError
from steerpeft.evaluation import evaluate
from steerpeft.io import read_adapter_meta, read_json
from steerpeft.models import load_model
from steerpeft.plan import Plan
from steerpeft.recipes import Recipe, load_recipe, validate
from steerpeft.report.metrics import eval_section
from steerpeft.run.evaluation import eval_batch_size, eval_prompts, evaluate_plan, media_sets, model_section
from steerpeft.run.folder import check_run_dir, default_run_dir, describe_path, say
from steerpeft.run.job import RunJob, command_line
from steerpeft.run.stages import ReportWriter
from steerpeft.run.state import RunResult, RunState


def _model_for(name: str | None, recorded: str | None, device: str | None, dtype: str) -> tuple[Any, Any]:
    chosen = name or recorded
    if not chosen or chosen.startswith("unnamed-"):
        raise ConfigError("The saved file does not say which model it was made for; name it with --model.")
    return load_model(chosen, dtype=dtype, device=device)


@contextlib.contextmanager
def applied_adapter(model: Any, path: str | os.PathLike) -> Iterator[Any]:
    """Load a PEFT adapter onto `model` while the block runs, and take it off afterwards."""
    loaded = load_adapter(model, path)
    try:
        yield loaded
    finally:
        for detach in ("unload", "remove"):
            method = getattr(loaded, detach, None)
            if callable(method):
                method()
                break
        else:
            raise SteerpeftError(f"The adapter loaded from {path} cannot be taken off the model again "
                                f"({type(loaded).__name__} has no remove() or unload()).")


def evaluate_saved(
    path: str | os.PathLike,
    *,
    out_dir: str | os.PathLike | None = None,
    model: Any = None,
    processor: Any = None,
    model_name: str | None = None,
    recipe: Recipe | str | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
    progress: bool = True,
    plots: bool = True,
    command: str | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Evaluate a saved plan, run folder or adapter; write metrics.json, report.md and plots into `out_dir`.

    Prompts: the recipe's (`recipe`, else the one stored in the plan, else the built-in `mars`
    recipe's), selected by its `eval.prompts` (default the validation split of its data).
    Model: `model`/`processor`, else `model_name`, else the model the plan or adapter records.
    """
    started = time.perf_counter()
    kind, folder = describe_path(path)
    plan_dir = folder / "plan" if kind == "run" else folder
    plan = Plan.load(plan_dir) if kind in ("plan", "run") else None
    adapter_config: dict[str, Any] = {}
    adapter_meta: dict[str, Any] = {}
    if kind == "adapter":
        if (folder / "adapter_config.json").is_file():
            adapter_config.update(read_json(folder / "adapter_config.json"))
        adapter_meta.update(read_adapter_meta(folder))
    if recipe is None:
        if plan is not None:
            stored, where = plan.metadata.get("recipe"), plan_dir / "plan.json"
        else:  # a STEER adapter carries its plan, recipe included
            stored, where = ((adapter_config.get("plan") or {}).get("metadata") or {}).get("recipe"), folder
        if isinstance(stored, Mapping):
            # A saved file never imports code: its recipe may name registered components only.
            recipe = Recipe(
                validate(dict(stored), str(where)), str(where), allow_import=False
            ).with_overrides(overrides)
        else:
            recipe = load_recipe("mars", overrides)
    else:
        recipe = (
            recipe.with_overrides(overrides) if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
        )
    options = recipe.section("eval")
    harmful, harmless, source = eval_prompts(recipe)
    out = check_run_dir(out_dir or default_run_dir(f"eval-{recipe.name}"))
    timings: dict[str, float] = {}
    if (model is None) != (processor is None):
        raise ConfigError("Pass both model= and processor=, or neither.")
    job = RunJob(f"eval-{recipe.name}", [ProgressBar(disable=None if progress else True), *callbacks,
                                          ReportWriter(plots=plots, progress=False)])
    with stage(job.callbacks, job, "eval"):
        if model is None:
            say(progress, "loading the model ...")
            tick = time.perf_counter()
            recorded = (
                plan.model_info.get("model_id") if plan is not None
                else (
                    adapter_config.get("base_model_name_or_path")
                    or (adapter_meta.get("model") or {}).get("model_id")
                )
            )
            model, processor = _model_for(model_name, recorded, device, recipe.section("model").dtype)
            timings["load_model_s"] = time.perf_counter() - tick
        say(progress, f"evaluating on {len(harmful)} harmful + {len(harmless)} harmless prompts ...")
        tick = time.perf_counter()
        media, batch_size = recipe.section("media"), eval_batch_size(recipe)
        if plan is not None:
            steered = str(plan.metadata.get("recipe_name") or recipe.name)
            report, gate, modalities, reuse = evaluate_plan(
                plan, model, processor, harmful, harmless, name=steered, options=options,
                batch_size=batch_size, media=media, progress=progress, callbacks=job.callbacks, runner=job,
            )
            adapter: dict[str, Any] = {}
        else:
            sets, modalities = media_sets(
                model, processor, harmful, harmless, batch_size=batch_size, media=media
            )
            steered = "adapter"
            report = evaluate(
                model, processor, sets, {"unsteered": None, steered: lambda: applied_adapter(model, folder)},
                generate=options.generate, max_new_tokens=options.max_new_tokens, progress=progress,
                callbacks=job.callbacks, runner=job,
            )
            gate, reuse = None, None
            adapter = {
                "status": "evaluated", "path": str(folder), "kind": adapter_meta.get("kind"),
                "peft_type": adapter_config.get("peft_type"),
                "message": "the adapter given to steerpeft eval",
            }
        timings["eval_s"] = time.perf_counter() - tick
        files_record: dict[str, Any] = {"report": "report.md", "metrics": "metrics.json", "plots": {}}
        if plan is not None:
            files_record["plan"] = os.path.relpath(plan_dir.resolve(), out.resolve())
        prompts = {"harmful": harmful, "harmless": harmless}
        state = RunState(
            out_dir=out, name=steered,
            recipe={"name": recipe.name, "source": recipe.source, "config": recipe.config}, model=model,
            processor=processor, plan=plan, report=report, gate=gate,
            model_record=model_section(model, modalities), prompts=prompts, prompt_source=source,
            eval_record=eval_section(
                report, steered=steered, prompts=prompts, source=source, generate=options.generate,
                max_new_tokens=options.max_new_tokens, reuse=reuse,
            ),
            command=command_line(command), started=started, timings=timings, adapter=adapter,
            files_record=files_record,
        )
        job.call("on_run_end", run=state)
    return RunResult(out, plan, state.metrics, report, None, state.files)
