"""The `steerpeft` argument parser: commands, shared options, help texts with examples."""

from __future__ import annotations

import argparse
import shlex
import sys
import textwrap
from pathlib import Path

from steerpeft import __version__

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
layers.png, gate.png, refusal.png (and trade.png for the ablation recipe).
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


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' layout; descriptions are wrapped by `_wrap` beforehand."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=96)


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree; `--quiet`/`--debug` work before or after the command."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars or progress lines (the final summary is still printed)")
    shared.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")
    running = argparse.ArgumentParser(add_help=False)
    running.add_argument("--device", metavar="DEVICE", help="cpu, cuda, cuda:1, mps ... (default: the "
                         "recipe's model.device, else the first GPU if any, else the CPU)")

    parser = argparse.ArgumentParser(
        prog="steerpeft", formatter_class=_Formatter,
        description=_wrap(
            "Find refusal directions in a model's activations, steer with them, share them as PEFT adapters."
        ),
        epilog=EXAMPLES["main"] + "\n" + OVERRIDES_HELP,
    )
    parser.add_argument("--quiet", "-q", action="store_true", default=False, help=argparse.SUPPRESS)
    parser.add_argument("--debug", action="store_true", default=False, help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"steerpeft {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run", parents=[shared, running], formatter_class=_Formatter,
        help="the main job: fit, evaluate, export, report",
        description=_wrap(
            "Fit a recipe, evaluate the plan (refusal on harmful prompts, over-refusal on "
            "harmless ones, KL; per modality, with ablations), export the PEFT adapter and write "
            "report.md with plots into a run folder. Default recipe: mars; default model: the "
            "embedded SmolLM2-135M-Instruct."
        ),
        epilog=EXAMPLES["run"] + "\n" + OVERRIDES_HELP,
    )
    run.add_argument("recipe", nargs="?", default=None, metavar="RECIPE",
                     help="a built-in recipe name (see `steerpeft recipes`) or a YAML file; default: mars")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides (see below)")
    run.add_argument(
        "--out", metavar="DIR", help="the run folder (default: output.dir, else runs/<recipe>-<timestamp>)"
    )
    run.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    run.add_argument("--no-export", action="store_true", help="skip the adapter export")

    fit = commands.add_parser(
        "fit", parents=[shared, running], formatter_class=_Formatter,
        help="fit a plan from a recipe and save it",
        description=_wrap(
            "Fit a recipe's steps (record activations, extract directions, score and choose "
            "layers, calibrate) and save the plan folder (plan.json + plan.safetensors). Prints the "
            "per-layer scores."
        ),
        epilog=EXAMPLES["fit"] + "\n" + OVERRIDES_HELP,
    )
    fit.add_argument("recipe", metavar="RECIPE", help="a built-in recipe name or a YAML file")
    fit.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides (see below)")
    fit.add_argument("--out", metavar="DIR", help="the plan folder (default: plans/<recipe>-<timestamp>)")

    evaluate = commands.add_parser(
        "eval", parents=[shared, running], formatter_class=_Formatter,
        help="evaluate a saved plan or adapter",
        description=_wrap(
            "Evaluate a saved plan, run folder or PEFT adapter against the unsteered model: "
            "refusal rate on harmful prompts, over-refusal on harmless prompts, first-token scores "
            "and KL, per modality. Prompts: the plan's recipe (or --recipe) with its eval.prompts "
            "choice, by default its test split (held out of the whole fit); plans without a recipe "
            "use the built-in mars recipe's. Writes metrics.json, report.md and plots."
        ),
        epilog=EXAMPLES["eval"] + "\n" + OVERRIDES_HELP,
    )
    evaluate.add_argument(
        "path", metavar="PLAN_OR_ADAPTER", help="a plan folder, a run folder or an adapter folder"
    )
    evaluate.add_argument(
        "overrides", nargs="*", metavar="key=value", help="overrides of the recipe used for prompts"
    )
    evaluate.add_argument(
        "--recipe", metavar="RECIPE", help="take prompts and eval options from this recipe instead"
    )
    evaluate.add_argument(
        "--model", metavar="NAME", help="the model to evaluate on (default: the one the file records)"
    )
    evaluate.add_argument(
        "--out", metavar="DIR", help="where to write the results (default: runs/eval-<recipe>-<timestamp>)"
    )
    evaluate.add_argument("--no-plots", action="store_true", help="skip the PNG plots")

    export = commands.add_parser(
        "export", parents=[shared, running], formatter_class=_Formatter,
        help="write a plan as a PEFT adapter",
        description=_wrap(
            "Export a saved plan (or a run folder's plan) as a PEFT adapter folder with a model card."
        ),
        epilog=EXAMPLES["export"],
    )
    export.add_argument("path", metavar="PLAN", help="a plan folder or a run folder")
    export.add_argument("--out", metavar="DIR", required=True, help="the adapter folder to write")
    export.add_argument(
        "--kind", choices=("auto", "lora", "steer"), default="auto",
        help="lora: a rank-1 weight edit; steer: the steering adapter; auto: lora when exact (default)",
    )
    export.add_argument("--model", metavar="NAME", help="the base model (default: the one the plan records)")

    info = commands.add_parser(
        "info", parents=[shared], formatter_class=_Formatter, help="describe a plan, adapter or run folder",
        description=_wrap("Describe a saved plan, adapter or run folder without loading a model: base model, "
                    "layers, positions, scaler (tau), chosen layer and per-layer scores."),
        epilog=EXAMPLES["info"])
    info.add_argument("path", metavar="PATH", help="a plan, adapter or run folder")

    recipes = commands.add_parser(
        "recipes", parents=[shared], formatter_class=_Formatter, help="list the built-in recipes",
        description=_wrap(
            "List the built-in recipes with their descriptions; pass a name to run, fit or eval."
        ),
        epilog=EXAMPLES["recipes"],
    )
    del recipes
    return parser


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


def command_line() -> str:
    """This invocation as one shell line, recorded in reports."""
    return (
        shlex.join(["steerpeft", *sys.argv[1:]]) if Path(sys.argv[0]).name == "steerpeft"
        else shlex.join(sys.argv)
    )
