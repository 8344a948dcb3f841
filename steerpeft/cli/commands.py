"""The `steerpeft` commands that load a model (run, fit, eval, export) and `recipes`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from steerpeft.callbacks import ProgressBar
from steerpeft.cli.describe import describe_plan_text
from steerpeft.cli.parser import command_line
from steerpeft.errors import ConfigError
from steerpeft.models import load_model
from steerpeft.plan import Plan
from steerpeft.recipes import RECIPES_DIR, load_recipe
from steerpeft.report.metrics import plan_section
from steerpeft.report.terminal import text_table
from steerpeft.run import evaluate_saved, export_plan, load_recipe_model, run_recipe
from steerpeft.run.folder import describe_path, say


def _plan_folder(path: str) -> Path:
    kind, folder = describe_path(path)
    if kind == "adapter":
        raise ConfigError(f"{folder} is an adapter; this command needs a plan folder (or a run folder).")
    return folder / "plan" if kind == "run" else folder


def cmd_run(args: argparse.Namespace) -> int:

    result = run_recipe(
        args.recipe or "mars", overrides=args.overrides, out_dir=args.out, progress=not args.quiet,
        export=not args.no_export, plots=not args.no_plots, device=args.device, command=command_line(),
    )
    print(result.summary())
    if result.metrics["adapter"].get("status") == "failed":
        print(
            f"error: the run finished, but the adapter export failed: {result.metrics['adapter']['message']}",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_fit(args: argparse.Namespace) -> int:



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
    print(describe_plan_text(plan, plan_section(plan), str(out)))
    print(
        f"\nsaved the plan to {out}\nnext: steerpeft eval {out}   |   steerpeft export {out} --out <adapter "
        "folder>"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:

    result = evaluate_saved(args.path, out_dir=args.out, model_name=args.model, recipe=args.recipe,
                            overrides=args.overrides, device=args.device, progress=not args.quiet,
                            plots=not args.no_plots, command=command_line())
    print(result.summary())
    return 0


def cmd_export(args: argparse.Namespace) -> int:

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
    print(
        f"load it with: from steerpeft.adapters import load_adapter; load_adapter(model, {str(args.out)!r})"
    )
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
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
