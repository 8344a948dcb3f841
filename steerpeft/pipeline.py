"""The main job: fit a recipe, evaluate it, export the adapter, write the report.

`run_recipe` is what `steerpeft run` does, callable from Python:

1. load the model named by the recipe's `model.*` keys (or use the one given);
2. fit every step with a progress bar and a JSONL log (`metrics.jsonl`), save `plan/`;
3. evaluate on the validation split the fit held out (`Recipe.split_prompts`, the very
   same seeded split), text-only and, for vision-language models, with neutral images
   and videos: the unsteered model, the plan, and for MARS plans its ablations;
4. for MARS plans, measure the gate value t of every evaluation input (media inputs
   also without re-centering, to show what the offset does);
5. export the PEFT adapter (`adapter/`) when `steerpeft.adapters` is available;
6. write `metrics.json` (every number), `report.md`, and the plots `layers.png`,
   `gate.png`, `refusal.png`.

Every file is written atomically (temporary sibling, then rename), so an interrupted
run never leaves a half-written file; `metrics.json` is written last.

`evaluate_saved` is the `steerpeft eval` half: a saved plan (or adapter) evaluated
the same way, without fitting.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerpeft.callbacks import JsonlLogger, ProgressBar
from steerpeft.errors import AdapterError, ConfigError, SteerpeftError
from steerpeft.evaluation import EvalReport, evaluate
from steerpeft.io import atomic_write_text, read_adapter_meta, read_json
from steerpeft.plan import Plan
from steerpeft.recipes import Recipe, load_recipe, validate
from steerpeft.report.markdown import render_report
from steerpeft.report.metrics import build_metrics, eval_section, gate_summary, step_tau
from steerpeft.report.plots import render_plots
from steerpeft.report.terminal import summary_table

EVAL_DEFAULTS: dict[str, Any] = {"generate": True, "max_new_tokens": 24, "batch_size": None, "ablations": True,
                                 "prompts": "validation"}
OUTPUT_DEFAULTS: dict[str, Any] = {"dir": None, "export": True, "plots": True}

RUN_FILES = ("plan", "adapter", "metrics.json", "metrics.jsonl", "report.md", "recipe.yaml", "layers.png", "gate.png",
             "refusal.png")
"""What a run folder holds; a folder holding any of these counts as a run folder that may be overwritten."""


@dataclass
class RunResult:
    """What a run produced: the folder, the plan, the evaluation and the metrics record."""

    out_dir: Path
    plan: Plan | None
    metrics: dict[str, Any]
    report: EvalReport | None = None
    adapter_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        """The plain-text summary `steerpeft run` prints: chosen layer, tau, refusal before/after, KL, folder."""
        return summary_table(self.metrics, str(self.out_dir))


# ---------------------------------------------------------------------------
# Small pieces, usable on their own


def say(progress: bool, message: str) -> None:
    """A progress line on stderr (stdout stays for results)."""
    if progress:
        print(message, file=sys.stderr, flush=True)


def default_run_dir(name: str) -> Path:
    """`runs/<name>-<YYYYmmdd-HHMMSS>` under the working directory."""
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_run_dir(path: str | os.PathLike) -> Path:
    """`path` as the run folder; refuses a file, or a non-empty folder that is not an earlier run folder.

    Nothing is created: the folder appears once the model has loaded (`Path.mkdir`)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"The run folder {out} exists and is a file; choose another --out.")
    if out.is_dir():
        entries = [p.name for p in out.iterdir() if not p.name.startswith(".")]
        if entries and not any(name in RUN_FILES for name in entries):
            raise ConfigError(f"The run folder {out} exists and holds other files ({', '.join(sorted(entries)[:3])}...); "
                              "choose an empty or new folder with --out.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def eval_options(recipe: Recipe) -> dict[str, Any]:
    """The recipe's `eval` block over the defaults (batch size falls back to `fit.batch_size`)."""
    options = {**EVAL_DEFAULTS, **{k: v for k, v in (recipe.config.get("eval") or {}).items() if v is not None}}
    if options["batch_size"] is None:
        options["batch_size"] = int((recipe.config.get("fit") or {}).get("batch_size") or 16)
    if int(options["max_new_tokens"]) < 1:
        raise ConfigError(f"eval.max_new_tokens must be >= 1, got {options['max_new_tokens']}.")
    return options


def output_options(recipe: Recipe) -> dict[str, Any]:
    return {**OUTPUT_DEFAULTS, **{k: v for k, v in (recipe.config.get("output") or {}).items() if v is not None}}


def eval_prompts(recipe: Recipe) -> tuple[list[str], list[str], str]:
    """(harmful, harmless, where they come from) for the evaluation, per the recipe's `eval.prompts`.

    - "validation" (default): the validation split the fit held out, recomputed exactly with
      `Recipe.split_prompts` (same data, seed and validation_fraction); the training
      prompts when the recipe makes no split;
    - "train" / "all": the training split / every prompt of the recipe's data;
    - a mapping `{positive: SOURCE, negative: SOURCE, limit: N}`: prompt files or built-in
      sets read with `steerpeft.data.load_prompts`.
    """
    choice = eval_options(recipe)["prompts"]
    if isinstance(choice, Mapping):
        from steerpeft.data import load_prompts

        unknown = set(choice) - {"positive", "negative", "limit", "column"}
        if unknown or not {"positive", "negative"} <= set(choice):
            raise ConfigError("eval.prompts as a mapping needs 'positive' and 'negative' (and optionally 'limit', "
                              f"'column'); got keys {sorted(choice)}.")
        kwargs = {"limit": choice.get("limit"), "column": choice.get("column")}
        positive, negative = load_prompts(choice["positive"], **kwargs), load_prompts(choice["negative"], **kwargs)
        return list(positive), list(negative), f"{choice['positive']} vs {choice['negative']}"
    splits = recipe.split_prompts(0)
    if choice == "validation":
        if splits["positive_validation"] and splits["negative_validation"]:
            return (splits["positive_validation"], splits["negative_validation"],
                    ("the validation split held out from the fit (the prompts the layers were scored on; the "
                    "direction never saw them)"))
        return splits["positive"], splits["negative"], "the training prompts (the recipe makes no validation split)"
    if choice == "train":
        return splits["positive"], splits["negative"], "the training prompts of the fit"
    if choice == "all":
        return (splits["positive"] + splits["positive_validation"], splits["negative"] + splits["negative_validation"],
                "every prompt of the recipe's data")
    raise ConfigError(f"eval.prompts must be 'validation', 'train', 'all' or a mapping of prompt sources, got {choice!r}.")


def load_recipe_model(recipe: Recipe, device: str | None = None) -> tuple[Any, Any]:
    """The model and processor named by the recipe's `model.*` keys (`device` overrides `model.device`)."""
    from steerpeft.models import load_model

    model = recipe.config.get("model") or {}
    return load_model(model.get("name"), dtype=model.get("dtype") or "float32", device=device or model.get("device"),
                      revision=model.get("revision"))


def model_section(model: Any, processor: Any, modalities: Sequence[str]) -> dict[str, Any]:
    """Provenance of the evaluated model for metrics.json."""
    from steerpeft.architectures import resolve_layout
    from steerpeft.models import model_id

    layout = resolve_layout(model)
    parameter = next(model.parameters())
    return {"id": model_id(model), "type": layout.family, "num_layers": layout.num_layers,
            "hidden_size": layout.hidden_size, "dtype": str(parameter.dtype).removeprefix("torch."),
            "device": str(parameter.device), "modalities": list(modalities)}


def evaluate_plan(
    plan: Plan, model: Any, processor: Any, harmful: Sequence[str], harmless: Sequence[str], *, name: str,
    options: Mapping[str, Any], media: Mapping[str, Any] | None = None, progress: bool = True,
) -> tuple[EvalReport, dict[str, Any] | None, list[str]]:
    """Evaluate `plan` (and its ablations) on every modality the model takes; gate values for MARS plans.

    Returns (report, gate section or None, modalities).
    """
    from steerpeft.mars.evaluation import conditions, eval_sets, gate_values, mars_step
    from steerpeft.mars.inputs import available_modalities

    media = dict(media or {})
    modalities = available_modalities(model, processor)
    sets = eval_sets(model, processor, harmful, harmless, modalities=modalities, batch_size=int(options["batch_size"]),
                     seed=int(media.get("seed") or 0), video_frames=int(media.get("video_frames") or 4))
    report = evaluate(model, processor, sets, conditions(plan, model, name=name, ablations=bool(options["ablations"])),
                      generate=bool(options["generate"]), max_new_tokens=int(options["max_new_tokens"]), progress=progress)
    step = mars_step(plan)
    gate = None
    if step is not None and step_tau(step) is not None:
        tau = float(step_tau(step))  # type: ignore[arg-type]
        gate = {"layer": step.layers[0], "tau": tau, "sets": {}}
        for set_name, batches in sets.items():
            modality = set_name.split("/", 1)[1]
            recentered = gate_values(plan, model, batches, modality, recenter=True)
            raw = gate_values(plan, model, batches, modality, recenter=False) if modality != "text" else None
            gate["sets"][set_name] = {"recentered": gate_summary(recentered, tau),
                                      "raw": None if raw is None else gate_summary(raw, tau)}
    return report, gate, modalities


def export_plan(plan: Plan, model: Any, path: str | os.PathLike, *, kind: str = "auto", strict: bool = False,
                root: str | os.PathLike | None = None, card: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Export `plan` as a PEFT adapter into `path`; a status dict for the report.

    `strict=False` (the run): a missing `steerpeft.adapters` or an export error is recorded
    ("unavailable" / "failed" with the message) and the run goes on.  `strict=True` (the
    `export` command) raises them as `SteerpeftError`.  `card` adds fields to the model card.
    """
    shown = os.path.relpath(path, root) if root is not None else str(path)
    try:
        from steerpeft.adapters import export_adapter
    except ImportError as exc:
        message = f"steerpeft.adapters.export_adapter is not available in this installation ({exc})"
        if strict:
            raise SteerpeftError(f"Cannot export: {message}. Update steerpeft, or use the plan folder with Plan.load.") from exc
        return {"status": "unavailable", "message": message, "kind": kind}
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
        info["peft_type"] = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8")).get("peft_type")
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
        what = "refusal on harmful prompts" if name.startswith("harmful") else "over-refusal on harmless prompts"
        parts.append(f"{what} {before.refusal_rate:.0%} -> {after.refusal_rate:.0%}")
    kl = rows.get(steered, {}).get("harmless/text")
    if kl is not None and kl.kl is not None:
        parts.append(f"first-token KL on harmless prompts {kl.kl:.4f} nats")
    text = f"Fitted with steerpeft's `{recipe_name}` recipe."
    if parts:
        n = rows[baseline]["harmful/text"].n
        text += f" Evaluation on {n} held-out prompts per set (keyword judge): " + "; ".join(parts) + "."
    return {"description": text}


def write_outputs(out: Path, metrics: dict[str, Any], *, plots: bool, started: float | None = None) -> dict[str, Path]:
    """Plots, then report.md and metrics.json (last), each written atomically; returns their paths.

    `started` (a `time.perf_counter()` value) sets `timings.total_s`; the time spent here is `report_s`.
    """
    tick = time.perf_counter()
    made = render_plots(metrics, out) if plots else {}
    if not plots:  # plots of an earlier run in this folder would no longer match the report
        for stale in ("layers.png", "gate.png", "refusal.png"):
            (out / stale).unlink(missing_ok=True)
    metrics["files"]["plots"] = made
    metrics["timings"]["report_s"] = round(time.perf_counter() - tick, 3)
    if started is not None:
        metrics["timings"]["total_s"] = round(time.perf_counter() - started, 3)
    atomic_write_text(out / "report.md", render_report(metrics))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    files = {name: out / file for name, file in made.items()}
    files.update({"report": out / "report.md", "metrics": out / "metrics.json"})
    return files


def _command(command: str | None) -> str:
    if command is not None:
        return command
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("steerpeft", "__main__.py", "cli.py"):
        argv[0] = "steerpeft"
    return shlex.join(argv)


# ---------------------------------------------------------------------------
# The main job


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
) -> RunResult:
    """Fit `recipe`, evaluate the plan, export the adapter and write the report into a run folder.

    `recipe`: a `Recipe`, a built-in name, a YAML path or a dict (`overrides` are applied on top).
    `out_dir`: the run folder; default the recipe's `output.dir`, else `runs/<recipe>-<timestamp>`.
    `model` / `processor`: use this model instead of loading the recipe's `model.name`
    (its tokenizer for text models, its processor for vision-language models).
    `export` / `plots`: False skips that part; the recipe's `output.export` / `output.plots`
    can switch them off too.  `device` overrides the recipe's `model.device`.
    `command`: recorded in the report (default: this process's command line).
    """
    started = time.perf_counter()
    recipe = recipe.with_overrides(overrides) if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)  # type: ignore[arg-type]
    if (model is None) != (processor is None):
        raise ConfigError("Pass both model= and processor= (the tokenizer for a text model), or neither.")
    recipe.steerers()  # build every component now: a bad option fails before the model loads
    options, output = eval_options(recipe), output_options(recipe)
    harmful, harmless, source = eval_prompts(recipe)
    out = check_run_dir(out_dir or output.get("dir") or default_run_dir(recipe.name))
    timings: dict[str, float] = {}

    say(progress, f"steerpeft: recipe {recipe.name!r}, run folder {out}")
    if model is None:
        say(progress, "[1/5] loading the model ...")
        tick = time.perf_counter()
        model, processor = load_recipe_model(recipe, device)
        timings["load_model_s"] = time.perf_counter() - tick
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.yaml", recipe.to_yaml())

    say(progress, "[2/5] fitting (recording activations, scoring layers) ...")
    tick = time.perf_counter()
    log = out / "metrics.jsonl"
    log.unlink(missing_ok=True)  # a fresh log for this run
    plan = recipe.fit(model, processor, callbacks=[ProgressBar(disable=None if progress else True), JsonlLogger(str(log))])
    plan.save(out / "plan")
    timings["fit_s"] = time.perf_counter() - tick

    say(progress, f"[3/5] evaluating on {len(harmful)} harmful + {len(harmless)} harmless prompts ...")
    tick = time.perf_counter()
    report, gate, modalities = evaluate_plan(plan, model, processor, harmful, harmless, name=recipe.name,
                                             options=options, media=recipe.config.get("media"), progress=progress)
    timings["eval_s"] = time.perf_counter() - tick

    adapter: dict[str, Any] = {"status": "skipped", "message": "export switched off"}
    adapter_dir = None
    if export and output.get("export", True):
        say(progress, "[4/5] exporting the adapter ...")
        tick = time.perf_counter()
        adapter = export_plan(plan, model, out / "adapter", root=out, card=adapter_card(recipe.name, report))
        timings["export_s"] = time.perf_counter() - tick
        if adapter["status"] == "exported":
            adapter_dir = out / "adapter"
        else:
            say(progress, f"        adapter not exported: {adapter['message']}")
    if adapter_dir is None and (out / "adapter").exists():  # an earlier run's adapter would not match this plan
        shutil.rmtree(out / "adapter", ignore_errors=True)

    say(progress, "[5/5] writing the report ...")
    evaluation = eval_section(report, steered=recipe.name, prompts={"harmful": harmful, "harmless": harmless},
                              source=source, generate=bool(options["generate"]),
                              max_new_tokens=int(options["max_new_tokens"]))
    files_record: dict[str, Any] = {"plan": "plan", "log": "metrics.jsonl", "recipe": "recipe.yaml",
                                    "report": "report.md", "metrics": "metrics.json", "plots": {}}
    if adapter_dir is not None:
        files_record["adapter"] = "adapter"
    metrics = build_metrics(
        recipe={"name": recipe.name, "source": recipe.source, "config": recipe.config},
        plan=plan, model=model_section(model, processor, modalities), evaluation=evaluation, gate=gate,
        adapter=adapter, timings=timings, command=_command(command), files=files_record,
    )
    files = write_outputs(out, metrics, plots=bool(plots and output.get("plots", True)), started=started)
    files.update({"plan": out / "plan", "log": log, "recipe": out / "recipe.yaml"})
    if adapter_dir is not None:
        files["adapter"] = adapter_dir
    return RunResult(out, plan, metrics, report, adapter_dir, files)


# ---------------------------------------------------------------------------
# Evaluating what was saved


def describe_path(path: str | os.PathLike) -> tuple[str, Path]:
    """("plan" | "adapter" | "run", folder) for a saved plan, adapter or run folder."""
    folder = Path(path)
    if not folder.exists():
        raise AdapterError(f"{folder} does not exist.")
    if (folder / "plan.json").is_file():
        return "plan", folder
    if (folder / "adapter_config.json").is_file():
        return "adapter", folder
    if (folder / "plan" / "plan.json").is_file():
        return "run", folder
    raise AdapterError(f"{folder} is neither a steerpeft plan (plan.json), an adapter (adapter_config.json) nor a run "
                       "folder (plan/plan.json).")


def _model_for(name: str | None, recorded: str | None, device: str | None, dtype: str) -> tuple[Any, Any]:
    from steerpeft.models import load_model

    chosen = name or recorded
    if not chosen or chosen.startswith("unnamed-"):
        raise ConfigError("The saved file does not say which model it was made for; name it with --model.")
    return load_model(chosen, dtype=dtype, device=device)


@contextlib.contextmanager
def applied_adapter(model: Any, path: str | os.PathLike) -> Iterator[Any]:
    """Load a PEFT adapter onto `model` while the block runs, and take it off afterwards."""
    try:
        from steerpeft.adapters import load_adapter
    except ImportError as exc:
        raise SteerpeftError(f"Evaluating an adapter needs steerpeft.adapters.load_adapter, which this installation "
                            f"lacks ({exc}). Evaluate the plan folder instead.") from exc
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
            recipe = Recipe(validate(dict(stored), str(where)), str(where), allow_import=False).with_overrides(overrides)
        else:
            recipe = load_recipe("mars", overrides)
    else:
        recipe = recipe.with_overrides(overrides) if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    options = eval_options(recipe)
    harmful, harmless, source = eval_prompts(recipe)
    out = check_run_dir(out_dir or default_run_dir(f"eval-{recipe.name}"))
    timings: dict[str, float] = {}
    if (model is None) != (processor is None):
        raise ConfigError("Pass both model= and processor=, or neither.")
    if model is None:
        say(progress, "loading the model ...")
        tick = time.perf_counter()
        recorded = plan.model_info.get("model_id") if plan is not None else (
            adapter_config.get("base_model_name_or_path") or (adapter_meta.get("model") or {}).get("model_id"))
        dtype = (recipe.config.get("model") or {}).get("dtype") or "float32"
        model, processor = _model_for(model_name, recorded, device, dtype)
        timings["load_model_s"] = time.perf_counter() - tick
    out.mkdir(parents=True, exist_ok=True)
    say(progress, f"evaluating on {len(harmful)} harmful + {len(harmless)} harmless prompts ...")
    tick = time.perf_counter()
    if plan is not None:
        report, gate, modalities = evaluate_plan(plan, model, processor, harmful, harmless,
                                                 name=str(plan.metadata.get("recipe_name") or recipe.name),
                                                 options=options, media=recipe.config.get("media"), progress=progress)
        steered = str(plan.metadata.get("recipe_name") or recipe.name)
        adapter: dict[str, Any] = {}
    else:
        from steerpeft.mars.evaluation import eval_sets
        from steerpeft.mars.inputs import available_modalities

        modalities = available_modalities(model, processor)
        media = recipe.config.get("media") or {}
        sets = eval_sets(model, processor, harmful, harmless, modalities=modalities, batch_size=int(options["batch_size"]),
                         seed=int(media.get("seed") or 0), video_frames=int(media.get("video_frames") or 4))
        steered = "adapter"
        report = evaluate(model, processor, sets, {"unsteered": None, steered: lambda: applied_adapter(model, folder)},
                          generate=bool(options["generate"]), max_new_tokens=int(options["max_new_tokens"]),
                          progress=progress)
        gate = None
        adapter = {"status": "evaluated", "path": str(folder), "kind": adapter_meta.get("kind"),
                   "peft_type": adapter_config.get("peft_type"), "message": "the adapter given to steerpeft eval"}
    timings["eval_s"] = time.perf_counter() - tick
    evaluation = eval_section(report, steered=steered, prompts={"harmful": harmful, "harmless": harmless}, source=source,
                              generate=bool(options["generate"]), max_new_tokens=int(options["max_new_tokens"]))
    files_record: dict[str, Any] = {"report": "report.md", "metrics": "metrics.json", "plots": {}}
    if plan is not None:
        files_record["plan"] = os.path.relpath(plan_dir.resolve(), out.resolve())
    metrics = build_metrics(
        recipe={"name": recipe.name, "source": recipe.source, "config": recipe.config}, plan=plan,
        model=model_section(model, processor, modalities), evaluation=evaluation, gate=gate, adapter=adapter,
        timings=timings, command=_command(command), files=files_record,
    )
    files = write_outputs(out, metrics, plots=plots, started=started)
    return RunResult(out, plan, metrics, report, None, files)
