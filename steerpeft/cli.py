"""The `steerpeft` command line: fit, eval, export, run, info, recipes.

`steerpeft run` is the main job (fit -> evaluate -> export -> report, see
`steerpeft.run`); the other commands do one part each.  Recipe keys are
overridden with trailing `key.path=value` arguments.  Errors print
`error: <message>` and exit with status 2; `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steerpeft.errors import ConfigError, SteerpeftError
from steerpeft.io import read_adapter_meta

OVERRIDES_HELP = """\
recipe overrides (trailing key=value arguments):
  dotted paths into the recipe; values are read as YAML (null, true, 0.5, [1, 2], {name: sweep}).
  List items are addressed by index: steps.0.selector.limits.kl=0.2 (or steps[0].selector...).
  Unknown keys are refused with the nearest valid name.  Common ones:
    model.name=Qwen/Qwen2.5-VL-7B-Instruct   model.dtype=bfloat16   model.device=cuda
    data.positive=harmful.txt   data.negative=harmless.txt   data.limit=24
    fit.seed=1   fit.validation_fraction=0.25   fit.batch_size=8
    steps.0.selector.limits.kl=0.2   steps.0.scaler.recenter=shift   steps.0.scaler.form=beta
    eval.max_new_tokens=8   eval.generate=false   eval.ablations=false   eval.prompts=all
"""

EXAMPLES = {
    "main": """\
examples:
  steerpeft run                          # MARS on the embedded SmolLM2-135M-Instruct, report in runs/
  steerpeft run mars data.limit=24 eval.max_new_tokens=8 --out /tmp/run1
  steerpeft recipes                      # the built-in recipes
  steerpeft info /tmp/run1/plan          # what a plan or adapter holds
  steerpeft <command> --help             # each command's options and examples
""",
    "run": """\
examples:
  steerpeft run
      MARS with the embedded SmolLM2-135M-Instruct on the built-in prompts (CPU, a few minutes)
  steerpeft run mars data.limit=24 eval.max_new_tokens=8 --out /tmp/run1
      a quick run on 24 prompts per class
  steerpeft run mars model.name=Qwen/Qwen2.5-VL-7B-Instruct model.dtype=bfloat16 --device cuda
      the same on a vision-language model (text, text+image and text+video are evaluated)
  steerpeft run actadd steps.0.selector.candidates.start=0.3
  steerpeft run my_recipe.yaml fit.seed=1 --no-plots

The run folder holds plan/, adapter/, metrics.json, metrics.jsonl, report.md, recipe.yaml and
layers.png, gate.png, refusal.png.
""",
    "fit": """\
examples:
  steerpeft fit mars --out plans/mars
  steerpeft fit actadd data.positive=harmful.txt data.negative=harmless.txt --out plans/actadd
  steerpeft fit mars model.name=Qwen/Qwen2.5-VL-7B-Instruct model.dtype=bfloat16 --device cuda

Then: steerpeft info plans/mars; steerpeft eval plans/mars; steerpeft export plans/mars --out adapters/mars
""",
    "eval": """\
examples:
  steerpeft eval plans/mars
      the plan's own recipe prompts (its validation split), model from the plan
  steerpeft eval runs/mars-20260101-120000 eval.max_new_tokens=8 --out /tmp/eval1
      a run folder: evaluates its plan/
  steerpeft eval adapters/mars --recipe mars data.limit=24
      an exported adapter, unsteered vs adapter
  steerpeft eval plans/mars --model /models/SmolLM2-135M-Instruct
""",
    "export": """\
examples:
  steerpeft export plans/mars --out adapters/mars
  steerpeft export runs/mars-20260101-120000 --out adapters/mars --kind lora
  steerpeft export plans/mars --out adapters/mars --model Qwen/Qwen2.5-VL-7B-Instruct --device cuda

--kind auto lets steerpeft.adapters pick the kind that represents the plan exactly
(lora for input-independent plans such as directional ablation, steer otherwise).
""",
    "info": """\
examples:
  steerpeft info plans/mars            # a plan: base model, layers, positions, scaler, per-layer scores
  steerpeft info adapters/mars         # an adapter: its adapter_config.json and files
  steerpeft info runs/mars-20260101-120000   # a run folder: its plan and result summary
""",
    "recipes": """\
examples:
  steerpeft recipes
  steerpeft run actadd
""",
}


# ---------------------------------------------------------------------------
# Parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' layout; descriptions are wrapped by `_wrap` beforehand."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)


def _wrap(text: str) -> str:
    import textwrap

    return textwrap.fill(text, width=96)


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree; `--quiet`/`--debug` work before or after the command."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars or progress lines (the final summary is still printed)")
    shared.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")
    running = argparse.ArgumentParser(add_help=False)
    running.add_argument("--device", metavar="DEVICE", help="cpu, cuda, cuda:1, mps ... (default: the recipe's "
                         "model.device, else the first GPU if any, else the CPU)")

    parser = argparse.ArgumentParser(
        prog="steerpeft", formatter_class=_Formatter,
        description=_wrap("Find refusal directions in a model's activations, steer with them, share them as PEFT adapters."),
        epilog=EXAMPLES["main"] + "\n" + OVERRIDES_HELP,
    )
    parser.add_argument("--quiet", "-q", action="store_true", default=False, help=argparse.SUPPRESS)
    parser.add_argument("--debug", action="store_true", default=False, help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"steerpeft {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run", parents=[shared, running], formatter_class=_Formatter, help="the main job: fit, evaluate, export, report",
        description=_wrap("Fit a recipe, evaluate the plan (refusal on harmful prompts, over-refusal on harmless ones, KL; "
                    "per modality, with ablations), export the PEFT adapter and write report.md with plots into a run "
                    "folder. Default recipe: mars; default model: the embedded SmolLM2-135M-Instruct."),
        epilog=EXAMPLES["run"] + "\n" + OVERRIDES_HELP)
    run.add_argument("recipe", nargs="?", default=None, metavar="RECIPE",
                     help="a built-in recipe name (see `steerpeft recipes`) or a YAML file; default: mars")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides (see below)")
    run.add_argument("--out", metavar="DIR", help="the run folder (default: output.dir, else runs/<recipe>-<timestamp>)")
    run.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    run.add_argument("--no-export", action="store_true", help="skip the adapter export")

    fit = commands.add_parser(
        "fit", parents=[shared, running], formatter_class=_Formatter, help="fit a plan from a recipe and save it",
        description=_wrap("Fit a recipe's steps (record activations, extract directions, score and choose layers, calibrate) "
                    "and save the plan folder (plan.json + plan.safetensors). Prints the per-layer scores."),
        epilog=EXAMPLES["fit"] + "\n" + OVERRIDES_HELP)
    fit.add_argument("recipe", metavar="RECIPE", help="a built-in recipe name or a YAML file")
    fit.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides (see below)")
    fit.add_argument("--out", metavar="DIR", help="the plan folder (default: plans/<recipe>-<timestamp>)")

    evaluate = commands.add_parser(
        "eval", parents=[shared, running], formatter_class=_Formatter, help="evaluate a saved plan or adapter",
        description=_wrap("Evaluate a saved plan, run folder or PEFT adapter against the unsteered model: refusal rate on "
                    "harmful prompts, over-refusal on harmless prompts, first-token scores and KL, per modality. "
                    "Prompts: the plan's recipe (or --recipe) with its eval.prompts choice, default its validation "
                    "split; plans without a recipe use the built-in mars recipe's. Writes metrics.json, report.md "
                    "and plots."),
        epilog=EXAMPLES["eval"] + "\n" + OVERRIDES_HELP)
    evaluate.add_argument("path", metavar="PLAN_OR_ADAPTER", help="a plan folder, a run folder or an adapter folder")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the recipe used for prompts")
    evaluate.add_argument("--recipe", metavar="RECIPE", help="take prompts and eval options from this recipe instead")
    evaluate.add_argument("--model", metavar="NAME", help="the model to evaluate on (default: the one the file records)")
    evaluate.add_argument("--out", metavar="DIR", help="where to write the results (default: runs/eval-<recipe>-<timestamp>)")
    evaluate.add_argument("--no-plots", action="store_true", help="skip the PNG plots")

    export = commands.add_parser(
        "export", parents=[shared, running], formatter_class=_Formatter, help="write a plan as a PEFT adapter",
        description=_wrap("Export a saved plan (or a run folder's plan) as a PEFT adapter folder with a model card."),
        epilog=EXAMPLES["export"])
    export.add_argument("path", metavar="PLAN", help="a plan folder or a run folder")
    export.add_argument("--out", metavar="DIR", required=True, help="the adapter folder to write")
    export.add_argument("--kind", choices=("auto", "lora", "steer"), default="auto",
                        help="lora: a rank-1 weight edit; steer: the steering adapter; auto: lora when exact (default)")
    export.add_argument("--model", metavar="NAME", help="the base model (default: the one the plan records)")

    info = commands.add_parser(
        "info", parents=[shared], formatter_class=_Formatter, help="describe a plan, adapter or run folder",
        description=_wrap("Describe a saved plan, adapter or run folder without loading a model: base model, layers, "
                    "positions, scaler (tau), chosen layer and per-layer scores."),
        epilog=EXAMPLES["info"])
    info.add_argument("path", metavar="PATH", help="a plan, adapter or run folder")

    recipes = commands.add_parser(
        "recipes", parents=[shared], formatter_class=_Formatter, help="list the built-in recipes",
        description=_wrap("List the built-in recipes with their descriptions; pass a name to run, fit or eval."),
        epilog=EXAMPLES["recipes"])
    del recipes
    return parser


def _version() -> str:
    try:
        from steerpeft import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "?"


def _split_arguments(args: argparse.Namespace, extras: list[str], parser: argparse.ArgumentParser) -> None:
    """Move stray `key=value` arguments (after options) into `args.overrides`; refuse anything else."""
    overrides = list(getattr(args, "overrides", None) or [])
    for item in extras:
        if item.startswith("-") or "=" not in item or not hasattr(args, "overrides"):
            parser.error(f"unrecognized argument {item!r}" + (
                "; recipe overrides look like key.path=value" if hasattr(args, "overrides") else ""))
        overrides.append(item)
    if getattr(args, "command", None) == "run" and args.recipe and "=" in args.recipe:
        overrides.insert(0, args.recipe)  # `steerpeft run data.limit=3`: the default recipe with an override
        args.recipe = None
    if getattr(args, "command", None) == "fit" and "=" in args.recipe:
        parser.error(f"fit needs a RECIPE before the overrides, e.g. `steerpeft fit mars {args.recipe}`")
    if hasattr(args, "overrides"):
        args.overrides = overrides


# ---------------------------------------------------------------------------
# Commands


def _quiet_libraries() -> None:
    """Keep transformers' progress bars and warnings out of a --quiet run."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _plan_folder(path: str) -> Path:
    from steerpeft.run import describe_path

    kind, folder = describe_path(path)
    if kind == "adapter":
        raise ConfigError(f"{folder} is an adapter; this command needs a plan folder (or a run folder).")
    return folder / "plan" if kind == "run" else folder


def cmd_run(args: argparse.Namespace) -> int:
    from steerpeft.run import run_recipe

    result = run_recipe(args.recipe or "mars", overrides=args.overrides, out_dir=args.out, progress=not args.quiet,
                        export=not args.no_export, plots=not args.no_plots, device=args.device,
                        command=_command_line())
    print(result.summary())
    if result.metrics["adapter"].get("status") == "failed":
        print(f"error: the run finished, but the adapter export failed: {result.metrics['adapter']['message']}",
              file=sys.stderr)
        return 1
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    import time

    from steerpeft.callbacks import ProgressBar
    from steerpeft.recipes import load_recipe
    from steerpeft.report.metrics import plan_section
    from steerpeft.run import load_recipe_model, say

    recipe = load_recipe(args.recipe, args.overrides)
    recipe.steerers()  # fail on bad options before the model loads
    out = Path(args.out) if args.out else Path("plans") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and any(out.iterdir()) and not (out / "plan.json").is_file():
        raise ConfigError(f"{out} exists and is not a plan folder; choose another --out.")
    say(not args.quiet, "loading the model ...")
    model, processor = load_recipe_model(recipe, args.device)
    say(not args.quiet, "fitting ...")
    plan = recipe.fit(model, processor, callbacks=[ProgressBar(disable=True if args.quiet else None)])
    plan.save(out)
    print(_describe_plan_text(plan, plan_section(plan), str(out)))
    print(f"\nsaved the plan to {out}\nnext: steerpeft eval {out}   |   steerpeft export {out} --out <adapter folder>")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from steerpeft.run import evaluate_saved

    result = evaluate_saved(args.path, out_dir=args.out, model_name=args.model, recipe=args.recipe,
                            overrides=args.overrides, device=args.device, progress=not args.quiet,
                            plots=not args.no_plots, command=_command_line())
    print(result.summary())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from steerpeft.models import load_model
    from steerpeft.plan import Plan
    from steerpeft.run import export_plan, say

    folder = _plan_folder(args.path)
    plan = Plan.load(folder)
    recorded = plan.model_info.get("model_id")
    name = args.model or recorded
    if not name or str(name).startswith("unnamed-"):
        raise ConfigError("The plan does not say which model it was fitted on; name it with --model.")
    dtype = ((plan.metadata.get("recipe") or {}).get("model") or {}).get("dtype") or "float32"
    say(not args.quiet, f"loading {name} ...")
    model, _ = load_model(name, dtype=dtype, device=args.device)
    info = export_plan(plan, model, args.out, kind=args.kind, strict=True)
    print(f"exported {folder} as a {info.get('kind', args.kind)} adapter to {args.out}")
    print(f"load it with: from steerpeft.adapters import load_adapter; load_adapter(model, {str(args.out)!r})")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from steerpeft.plan import Plan
    from steerpeft.report.metrics import plan_section
    from steerpeft.report.terminal import summary_table
    from steerpeft.run import describe_path

    kind, folder = describe_path(args.path)
    if kind == "adapter":
        print(_describe_adapter_text(folder))
        return 0
    plan_dir = folder / "plan" if kind == "run" else folder
    plan = Plan.load(plan_dir)
    print(_describe_plan_text(plan, plan_section(plan), str(plan_dir)))
    if kind == "run":
        metrics_file = folder / "metrics.json"
        if metrics_file.is_file():
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
            print("\nresults (metrics.json):")
            print(summary_table(metrics, str(folder)))
        if (folder / "adapter" / "adapter_config.json").is_file():
            print("\n" + _describe_adapter_text(folder / "adapter"))
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from steerpeft.recipes import RECIPES_DIR
    from steerpeft.report.terminal import text_table

    rows = []
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        try:
            config = OmegaConf.to_container(OmegaConf.load(path))
        except Exception as exc:  # noqa: BLE001 - one broken file should not hide the others
            rows.append([path.stem, f"(unreadable: {exc})"])
            continue
        description = str((config or {}).get("description") or "")  # type: ignore[union-attr]
        rows.append([path.stem, description])
    if not rows:
        raise ConfigError(f"No built-in recipes found in {RECIPES_DIR}: the installation is incomplete.")
    print(text_table(["recipe", "description"], rows))
    print(f"\n(from {RECIPES_DIR}; run one with `steerpeft run NAME`, or pass your own YAML file)")
    return 0


# ---------------------------------------------------------------------------
# Descriptions


def _describe_plan_text(plan: Any, section: dict[str, Any], where: str) -> str:
    from steerpeft.report.terminal import text_table

    info = plan.model_info
    lines = [f"plan: {where}",
             (f"  base model   {info.get('model_id', '?')} ({info.get('model_type', '?')}, {info.get('num_layers', '?')} "
             f"layers, hidden size {info.get('hidden_size', '?')})")]
    if plan.metadata.get("recipe_name"):
        lines.append(f"  recipe       {plan.metadata['recipe_name']}")
    for step in section["steps"]:
        layers = [layer for layer in step["layers"] if layer >= 0]
        shown = ", ".join(map(str, layers)) if len(layers) <= 8 else f"{layers[0]}..{layers[-1]} ({len(layers)} layers)"
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
    main = next((s for s in section["steps"] if s["name"] == section["main_step"]), None)
    table = (main or {}).get("layer_scores") or []
    if table:
        columns = [c for c in ("separation", "accuracy", "induce", "kl", "false_trigger", "tau") if c in table[0]]
        rows = []
        for row in table:
            cells = [row["layer"]] + [_cell(row.get(c), c) for c in columns]
            if "within_limits" in row:
                cells.append("yes" if row["within_limits"] else "no")
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


def _describe_adapter_text(folder: Path) -> str:
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
    lines = [f"adapter: {folder}", f"  base model   {base}" + (f" ({model.get('model_type')}, {model.get('num_layers')} "
             f"layers, hidden size {model.get('hidden_size')})" if model.get("model_type") else "")]
    kind = meta.get("kind") or ("lora" if str(config.get("peft_type", "")).upper() == "LORA" else config.get("peft_type"))
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
        lines.append("  steer/       the STEER part of a combined export (steerpeft's load_adapter loads both)")
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


def _command_line() -> str:
    import shlex

    return shlex.join(["steerpeft", *sys.argv[1:]]) if Path(sys.argv[0]).name == "steerpeft" else shlex.join(sys.argv)


COMMANDS = {"run": cmd_run, "fit": cmd_fit, "eval": cmd_eval, "export": cmd_export, "info": cmd_info,
            "recipes": cmd_recipes}


# ---------------------------------------------------------------------------
# Entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 error, 1 run finished with a failed export)."""
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
        _split_arguments(args, extras, parser)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.quiet:
        _quiet_libraries()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (SteerpeftError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {_message(exc)}", file=sys.stderr)
        return 2


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, SteerpeftError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
