"""Validation of MARS (issue 14, item 7): real refusal numbers on held-out prompts, one command.

Fits every condition on the package's built-in prompts only (`load_recipe(name, overrides).fit`) and
evaluates on prompts no fit decision saw: the built-in test split, a fixed sample of HarmBench and
the benign anchors (`../shared/data`).  Models: Qwen2.5-Coder-0.5B-Instruct (text) and the
Qwen2.5-VL-shaped model on its weights (text, text + neutral image, text + neutral video).
Conditions: unsteered; MARS as shipped; MARS as MARS.md writes it; MARS with the refused-centroid
target; the package's ablation rows of the shipped plan; the `ablation` recipe (text model).

    python benchmarks/validate_mars.py            # everything -> benchmarks/VALIDATION.md
                                                  #   + results/validation/
    python benchmarks/validate_mars.py --fresh    # recompute what is cached
    python benchmarks/validate_mars.py --smoke --out /tmp/v   # tiny random Llama, seconds (CI)

Every fit and evaluation is cached under the results folder as soon as it is done, so a rerun
resumes; with everything cached it only rewrites the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import validation_lib as V
import validation_report as R

from steerpeft.evaluation import evaluate
from steerpeft.evaluation.judge import is_refusal
from steerpeft.evaluation.runs import generate_texts
from steerpeft.mars.evaluation import without_recentering
from steerpeft.recipes import EvalOptions, load_recipe
from steerpeft.report import plot_trade
from steerpeft.run.evaluation import evaluate_plan, media_sets

SHARED = HERE.parents[1] / "shared"
GGUF = Path("/root/.cache/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct.gguf")
FETCH = "bash ../shared/models/get-qwen2.5-coder-0.5b-instruct.sh"
BATCH = 16

MARS_VARIANTS: dict[str, list[str]] = {
    "mars-md": ["steps.0.scaler.target=1", "steps.0.scaler.gate=ramp", "steps.0.selector.score=separation"],
    "mars-refused": ["steps.0.scaler.target=refused_centroid"],
}
"""MARS conditions besides the recipe as shipped ("mars"): overrides of `recipes/mars.yaml`."""
SMOKE_OVERRIDES = ["steps.0.scaler.tau=0.0"]
"""Smoke only: a random model's calibrated gate stays shut; tau 0 opens rows so every path generates."""
ABLATION_OVERRIDES = ["fit.test_fraction=0.2"]
"""The ablation recipe holds out no test split as shipped; the same 0.2 (seed 0) holds out exactly
MARS's test split, so the built-in test prompts stay unseen by every fit."""
SPARED = "steps.0.extractor={name: diff_means, spare_negative_mean: true}"
"""The recipe's direction: the difference of means without its component along the harmless mean."""
PLAIN = "steps.0.extractor={name: diff_means, spare_negative_mean: false}"
"""Arditi et al.'s plain difference of means."""
ABLATION_VARIANTS = {
    "ablation": [*ABLATION_OVERRIDES, SPARED],
    "ablation-kl0.2": [*ABLATION_OVERRIDES, SPARED, "steps.0.selector.max_kl=0.2"],
    "ablation-arditi": [*ABLATION_OVERRIDES, PLAIN],
    "ablation-arditi-kl0.2": [*ABLATION_OVERRIDES, PLAIN, "steps.0.selector.max_kl=0.2"],
    "ablation-arditi-kl1": [*ABLATION_OVERRIDES, PLAIN, "steps.0.selector.max_kl=1.0"],
}
"""The refusal-KL trade of the ablation recipe on held-out prompts: as shipped (harmless mean spared, KL
limit 0.1) and at the issue's KL budget 0.2; Arditi et al.'s plain direction at 0.1, 0.2 and a limit loose
enough to admit the strongest bypass. Every extractor setting is explicit, so a cached fit never stands
for another configuration. Each limit is applied to the fit's own validation prompts; the held-out prompts
only measure the result."""


@dataclass
class ModelSpec:
    """One model of the validation and how many held-out prompts it gets per source."""

    key: str
    title: str
    load: Callable[[], tuple[Any, Any]]
    builtin: int | None
    harmbench: int | None
    benign: int | None
    mars_ablations: bool
    """The package's ablation rows through `evaluate_plan` (else only "no re-centering", via reused
    answers)."""
    variants: bool
    """Also fit and evaluate the MARS variants (MARS.md, refused centroid)."""
    ablation_recipe: bool
    shared: Path | None
    batch_size: int = BATCH


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def qwen_specs(args: argparse.Namespace) -> list[ModelSpec]:
    from steerpeft.models import load_model

    def text() -> tuple[Any, Any]:
        return load_model(str(GGUF), device="cpu")

    def vl() -> tuple[Any, Any]:
        return load_model(f"qwen2.5-vl-shaped:{GGUF}", device="cpu")

    specs = [
        ModelSpec(
            "qwen-text",
            "Qwen2.5-Coder-0.5B-Instruct (text)",
            text,
            None,
            args.harmbench,
            args.benign,
            True,
            True,
            True,
            SHARED,
        ),
        ModelSpec(
            "qwen-vl-shaped",
            "Qwen2.5-VL-shaped (real Qwen2.5-Coder-0.5B text weights, random vision)",
            vl,
            args.vl_builtin,
            args.vl_harmbench,
            args.vl_benign,
            args.vl_ablations,
            args.vl_variants,
            False,
            SHARED,
            args.vl_batch_size,
        ),
    ]
    return specs


def smoke_specs() -> list[ModelSpec]:
    import benchlib as B

    from steerpeft.data import builtin_prompts

    def tiny() -> tuple[Any, Any]:
        texts = [*builtin_prompts("harmful"), *builtin_prompts("harmless")]
        loaded = B.build_tiny_chat(torch.device("cpu"), torch.float32, texts)
        return loaded.model, loaded.tokenizer

    return [ModelSpec("tiny-llama", "tiny random Llama (smoke)", tiny, 6, None, None, True, True, True, None)]


def cached_model(spec: ModelSpec, store: V.Store) -> dict[str, Any]:
    """What `run_model` returns, read back from the results folder alone (`--report-only`)."""
    read = {path.stem: json.loads(path.read_text()) for path in store.folder.glob("*.json")}
    if "eval-mars" not in read:
        raise SystemExit(f"{store.folder} holds no evaluation yet: run without --report-only first.")
    fits = {key.removeprefix("fit-"): value for key, value in read.items() if key.startswith("fit-")}
    evals = {value.get("name") or next(iter(value["rows"])): value for key, value in read.items()
             if key.startswith("eval-") and key != "eval-mars"}
    evals["mars"] = read["eval-mars"]
    if "check-reuse" in read:
        evals["check"] = read["check-reuse"]
    return {"spec": read["spec"], "prompts": read["prompts"], "fits": fits, "evals": evals}


def run_model(spec: ModelSpec, store: V.Store, args: argparse.Namespace) -> dict[str, Any]:
    """Fit and evaluate every condition on one model; returns what the report needs."""
    log(f"== {spec.title}")
    model, processor = spec.load()
    model.eval()
    extra = SMOKE_OVERRIDES if args.smoke else []
    recipe = load_recipe("mars", extra)
    prompts = V.held_out_prompts(recipe, spec.shared, builtin=spec.builtin, harmbench=spec.harmbench,
                                 benign=spec.benign)
    settings = {**prompts.to_dict(), "max_new_tokens": args.max_new_tokens, "batch_size": spec.batch_size}
    previous = store.read("prompts")
    if previous is not None and previous.get("max_new_tokens") is not None and previous != settings:
        raise SystemExit(f"{store.folder} holds results for other prompts or settings: rerun with --fresh.")
    store.write("prompts", settings)
    media = recipe.section("media")
    sets, modalities = media_sets(
        model, processor, prompts.harmful, prompts.harmless, batch_size=spec.batch_size, media=media
    )
    fits: dict[str, dict[str, Any]] = {}
    plan, fits["mars"] = V.fit_cached(store, "mars", recipe, extra, model, processor, log)

    main = store.read("eval-mars")
    if main is None:
        counts = {k: sum(len(b["input_ids"]) for b in v) for k, v in sets.items()}
        log(f"mars: evaluate_plan on {counts}")
        start = time.perf_counter()
        options = EvalOptions(max_new_tokens=args.max_new_tokens, ablations=spec.mars_ablations)
        report, gate, _, reuse = evaluate_plan(
            plan,
            model,
            processor,
            prompts.harmful,
            prompts.harmless,
            name="mars",
            options=options,
            batch_size=spec.batch_size,
            media=media,
            progress=args.progress,
        )
        main = {
            "rows": V.report_rows(report),
            "gate": gate,
            "reuse": reuse,
            "eval_s": time.perf_counter() - start,
        }
        store.write("eval-mars", main)
    log(f"mars: evaluated in {main['eval_s']:.0f} s")
    unsteered = {name: row["texts"] for name, row in main["rows"]["unsteered"].items()}
    evals: dict[str, dict[str, Any]] = {"mars": main}

    if not spec.mars_ablations and len(modalities) > 1:
        # The re-centering ablation is the one that matters with media; gate-closed rows reuse answers.
        name = "mars (no re-centering)"
        evals[name] = reused_eval(
            store, name, without_recentering(plan), model, processor, sets, unsteered, args
        )
    for condition, overrides in MARS_VARIANTS.items() if spec.variants else ():
        variant, fits[condition] = V.fit_cached(store, condition, load_recipe("mars", [*overrides, *extra]),
                                                [*overrides, *extra], model, processor, log)
        evals[condition] = reused_eval(store, condition, variant, model, processor, sets, unsteered, args)
    if args.check and spec.key != "qwen-vl-shaped":
        evals["check"] = reuse_check(store, plan, model, processor, sets, unsteered, main, args)
    for condition, overrides in ABLATION_VARIANTS.items() if spec.ablation_recipe else ():
        ablation = load_recipe("ablation", overrides)
        ablation_plan, fits[condition] = V.fit_cached(store, condition, ablation, overrides, model, processor,
                                                      log)
        evals[condition] = ablation_eval(store, condition, ablation_plan, model, processor, sets, args)
    del model
    about = {"key": spec.key, "title": spec.title, "modalities": modalities, "batch_size": spec.batch_size}
    store.write("spec", about)
    return {"spec": about, "prompts": prompts.to_dict(), "fits": fits, "evals": evals}


def reused_eval(store: V.Store, condition: str, plan: Any, model: Any, processor: Any, sets: dict[str, list],
                unsteered: dict[str, list[str]], args: argparse.Namespace) -> dict[str, Any]:
    """A MARS variant per prompt set (each cached as soon as done), reusing the unsteered answers."""
    key = f"eval-{V.slug(condition)}"
    record = store.read(key) or {"rows": {condition: {}}, "gate": None, "eval_s": 0.0}
    for set_name, batches in sets.items():
        if set_name in record["rows"][condition]:
            continue
        log(f"{condition}: {set_name}")
        start = time.perf_counter()
        summary, states = V.evaluate_reusing(plan, model, processor, batches, unsteered[set_name],
                                             args.max_new_tokens)
        gate = V.gate_of_sets(plan, {set_name: states})
        record["gate"] = {**gate, "sets": {**((record["gate"] or {}).get("sets") or {}), **gate["sets"]}}
        record["rows"][condition][set_name] = summary
        record["eval_s"] += time.perf_counter() - start
        store.write(key, record)
    log(f"{condition}: evaluated in {record['eval_s']:.0f} s")
    return record


def reuse_check(
    store: V.Store,
    plan: Any,
    model: Any,
    processor: Any,
    sets: dict[str, list],
    unsteered: dict[str, list[str]],
    main: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The reused-answer path on the shipped plan, against `evaluate_plan`'s own row: same answers, same
    KL."""
    record = store.read("check-reuse")
    if record is None:
        set_name = next(name for name in sets if name.startswith("harmless/"))
        summary, _ = V.evaluate_reusing(plan, model, processor, sets[set_name], unsteered[set_name],
                                        args.max_new_tokens)
        reference = main["rows"]["mars"][set_name]
        record = {"set": set_name, "same_texts": summary["texts"] == reference["texts"],
                  "kl_reused": summary["kl"], "kl_evaluate_plan": reference["kl"]}
        store.write("check-reuse", record)
    log(f"reuse check: {record}")
    return record


def ablation_eval(store: V.Store, condition: str, plan: Any, model: Any, processor: Any,
                  sets: dict[str, list], args: argparse.Namespace) -> dict[str, Any]:
    """An ablation recipe: first-token KL and score on every set, greedy answers on the harmful ones."""
    key = f"eval-{V.slug(condition)}"
    record = store.read(key)
    if record is not None:
        return record
    start = time.perf_counter()
    report = evaluate(model, processor, sets, {"unsteered": None, condition: lambda: plan.apply(model)},
                      generate=False, progress=args.progress)
    rows = {}
    for set_name, result in report.rows[condition].items():
        texts = None
        if set_name.startswith("harmful/"):
            log(f"{condition}: generating {set_name}")
            with plan.apply(model):
                texts = [t for batch in sets[set_name] for t in generate_texts(model, processor, batch,
                                                                                   args.max_new_tokens)]
        rows[set_name] = V.set_summary(
            None if texts is None else [is_refusal(t) for t in texts], texts, result.kl, result.scores
        )
    record = {"rows": {condition: rows}, "eval_s": time.perf_counter() - start}
    store.write(key, record)
    log(f"{condition}: evaluated in {record['eval_s']:.0f} s")
    return record


def trade_figures(models: Sequence[dict[str, Any]], results: Path, report_dir: Path) -> dict[str, str]:
    """Draw the ablation recipe's refusal-KL trade for each model that fitted it; {model key: path from the
    report}."""
    figures = {}
    for model in models:
        plan = (model["fits"].get("ablation") or {}).get("plan") or {}
        if plan.get("layer_scores"):
            recipe = load_recipe("ablation", ABLATION_VARIANTS["ablation"])
            limit = recipe.config["steps"][0]["selector"]["max_kl"]
            path = results / model["spec"]["key"] / "ablation-trade.png"
            plot_trade(plan["layer_scores"], plan["layer"], path, max_kl=float(limit))
            figures[model["spec"]["key"]] = os.path.relpath(path, report_dir)
    return figures


def machine() -> dict[str, Any]:
    import benchlib as B

    return {"cpu": B.cpu_name(), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": __import__("transformers").__version__}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny random Llama, a handful of prompts, no shared assets"
    )
    parser.add_argument("--fresh", action="store_true", help="recompute everything, ignoring cached results")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report from the cached results alone (no model is loaded)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for VALIDATION.md and results/ (default: benchmarks/ and benchmarks/results/validation)",
    )
    parser.add_argument("--models", nargs="+", default=["qwen-text", "qwen-vl-shaped"])
    parser.add_argument(
        "--harmbench", type=int, default=80, help="HarmBench lines, evenly spaced (text model)"
    )
    parser.add_argument("--benign", type=int, default=50, help="benign anchors, evenly spaced (text model)")
    parser.add_argument(
        "--vl-builtin", type=int, default=None, help="built-in test prompts per side (VL model)"
    )
    parser.add_argument("--vl-harmbench", type=int, default=6)
    parser.add_argument("--vl-benign", type=int, default=6)
    parser.add_argument(
        "--vl-batch-size",
        type=int,
        default=24,
        help="one batch per VL set: evaluate_plan cannot reuse answers there, and a wider batch costs "
        "little more per generated token on CPU",
    )
    parser.add_argument(
        "--vl-ablations",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="all of the package's ablation rows on the VL model (each a full generation pass there: "
        "the model keeps rope state, so evaluate_plan cannot reuse answers); default: no re-centering only",
    )
    parser.add_argument(
        "--vl-variants",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also fit the MARS.md and refused-centroid variants on the VL model (about 10 min of fit each)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the reused-answer check against evaluate_plan (one harmless set)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    if args.smoke:
        args.max_new_tokens, args.threads, args.progress = 4, args.threads or 1, False
        args.out = args.out or Path("/tmp/steerpeft-validate-smoke")
    return args


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the validation and write the report; returns the report's path."""
    args = parse(argv)
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report_path = (args.out / "VALIDATION.md") if args.out else HERE / "VALIDATION.md"
    results = (args.out / "results") if args.out else HERE / "results" / "validation"
    if not args.smoke and not GGUF.exists():
        print(f"{GGUF} is missing: run `{FETCH}` from the repository root first.", file=sys.stderr)
        raise SystemExit(2)
    if not args.smoke and not SHARED.is_dir():
        print(
            f"{SHARED} is missing: the held-out HarmBench and benign-anchor prompts live there.",
            file=sys.stderr,
        )
        raise SystemExit(2)
    every = smoke_specs() if args.smoke else qwen_specs(args)
    specs = every if args.smoke else [spec for spec in every if spec.key in args.models]
    models = []
    for spec in every:  # the report keeps the models this run does not touch, from their cached results
        store = V.Store(results / spec.key, args.fresh)
        if spec in specs and not args.report_only:
            models.append(run_model(spec, store, args))
        elif (results / spec.key / "spec.json").exists() and (results / spec.key / "eval-mars.json").exists():
            models.append(cached_model(spec, store))
    heretic = V.Store(results, False).read("heretic") if not args.smoke else None
    command = " ".join(["python", *([sys.argv[0]] if argv is None else ["benchmarks/validate_mars.py"]),
                        *(sys.argv[1:] if argv is None else argv)])
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs = (V.Store(results, False).read("runs") or {"runs": []})["runs"]
    if args.fresh:
        runs = []
    if not args.report_only or not runs:
        runs.append({"date": date, "command": command, "wall_s": time.perf_counter() - start,
                     "models": [spec.key for spec in specs]})
    V.Store(results, False).write("runs", {"runs": runs})
    if args.report_only:  # the command that computed the results, not the one that rewrote the text
        command = runs[-1]["command"]
    header = {
        "figures": trade_figures(models, results, report_path.parent),
        "date": date,
        "command": command,
        "wall_s": runs[-1]["wall_s"],
        "runs": runs,
        "machine": machine(),
        "smoke": args.smoke,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": BATCH,
    }
    V.Store(results, False).write("summary", R.summary(header, models, heretic))
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(R.markdown(header, models, heretic))
    log(f"wrote {report_path} ({header['wall_s']:.0f} s)")
    return report_path


if __name__ == "__main__":
    main()
