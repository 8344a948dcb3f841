"""The main job (`steerpeft run` with the `mars` recipe), stage by stage, priced against its floors.

Stages, each timed (wall and process CPU seconds) in one process on the same model:

- `floor_forward`: one plain forward over the fit prompts (`use_cache=False`, logits of the last
  column only, the fit's batches): the fit's floor;
- `fit_today` / `fit_fast`: `Steerer.fit` of the recipe's step; `fast` swaps the MARS selector's
  per-candidate full forwards for one `DecisionPrefix` (one token per candidate plan).  Split into
  `recording` (every split) and `sweep` (the selector) from the fit callbacks;
- `floor_generate`: one unsteered greedy generation pass over the evaluation sets (the eval floor);
- `eval_today`: `evaluate` with the MARS conditions + the gate values, as `evaluate_plan` runs them;
- `eval_reuse_*`: `evaluate_mars` (decision prefix, only rows whose gate is open regenerated, gate
  values from its recorded states): `rows` one call per condition, `rows_prefill` also sharing the
  prompt prefill, `stacked` also generating the unsteered and decision-position conditions in one call.

Checks: the fast fit picks the same layer (per-layer KL / induce differences reported), and the
fast evaluation gives the same answers, scores and KL as today's (counts and max differences).

    python benchmarks/bench_main_job.py --model smollm2 --threads 1 --out main-job-smollm2.json
    python benchmarks/bench_main_job.py --smoke          # tiny model, seconds (CI)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B

from steerpeft.callbacks import Callback
from steerpeft.evaluation import evaluate, generate_texts
from steerpeft.evaluation.decision_prefix import DecisionPrefix
from steerpeft.evaluation.reuse import trust_region_t
from steerpeft.mars.evaluation import conditions, eval_sets, gate_values, mars_step
from steerpeft.mars.evaluation_reuse import evaluate_mars
from steerpeft.recipes import load_recipe

TARGETS = {"fit_fast": 3.0, "sweep_fast": 1.0}
"""Ratios to the forward floor; the evaluation's target is (1 + conditions that can differ) x the generation floor."""


# ---------------------------------------------------------------------------------------------
# Timing


class Clock:
    """Wall and process-CPU seconds of named stages."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        B.log(f"{name} ...")
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.stages[name] = {"wall_s": round(time.perf_counter() - wall, 3), "cpu_s": round(time.process_time() - cpu, 3)}
        B.log(f"{name}: {self.stages[name]['wall_s']:.1f} s wall, {self.stages[name]['cpu_s']:.1f} s CPU")


class FitTimes(Callback):
    """Recording and selector time of one `Steerer.fit`, from its callbacks."""

    def __init__(self) -> None:
        self.marks: dict[str, tuple[float, float]] = {}
        self.recording = {"wall_s": 0.0, "cpu_s": 0.0}
        self._start: tuple[float, float] | None = None

    @staticmethod
    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def on_record_start(self, steerer: Any, split: str, total: int) -> None:
        self._start = self.now()

    def on_record_end(self, steerer: Any, split: str, activations: Any) -> None:
        wall, cpu = self.now()
        assert self._start is not None
        self.recording["wall_s"] += wall - self._start[0]
        self.recording["cpu_s"] += cpu - self._start[1]

    def on_directions_computed(self, steerer: Any, directions: Any) -> None:
        self.marks["directions"] = self.now()

    def on_layer_selected(self, steerer: Any, selection: Any) -> None:
        self.marks["selected"] = self.now()

    def sweep(self) -> dict[str, float]:
        (w0, c0), (w1, c1) = self.marks["directions"], self.marks["selected"]
        return {"wall_s": round(w1 - w0, 3), "cpu_s": round(c1 - c0, 3)}


# ---------------------------------------------------------------------------------------------
# The fast sweep, wired in from outside the selector


class PrefixedDecisionLogits:
    """Drop-in for the MARS selector's `_decision_logits(model, batches, plan)`.

    The selector passes the same list of harmless validation batches for the base logits and for
    every candidate plan; the first call fills one `DecisionPrefix` over all of them, every later
    call runs one decision token per row.
    """

    def __init__(self) -> None:
        self._batches: list[Any] | None = None
        self._prefix: DecisionPrefix | None = None
        self.calls = 0

    def __call__(self, model: Any, batches: list[dict[str, torch.Tensor]], plan: Any = None) -> torch.Tensor:
        if self._batches is not batches:
            self._batches, self._prefix = batches, DecisionPrefix(model, batches)
        self.calls += 1
        assert self._prefix is not None
        return self._prefix.logits(plan)


@contextmanager
def fast_sweep() -> Iterator[PrefixedDecisionLogits]:
    shim = PrefixedDecisionLogits()
    with mock.patch("steerpeft.selectors.mars._decision_logits", shim):
        yield shim


# ---------------------------------------------------------------------------------------------
# Stages


def fit_prompts(loaded: B.Loaded, smoke_count: int) -> tuple[list[str], list[str]]:
    """(harmful, harmless): the built-in sets for SmolLM2 (the recipe's data), synthetic words otherwise."""
    if loaded.real_weights:
        from steerpeft.data import builtin_prompts

        return list(builtin_prompts("harmful").prompts), list(builtin_prompts("harmless").prompts)
    return B.contrast_prompts(loaded, smoke_count, 8, 0)


def plain_forward(loaded: B.Loaded, batches: Sequence[dict[str, torch.Tensor]]) -> None:
    with torch.no_grad():
        for batch in batches:
            loaded.model(**batch, use_cache=False, logits_to_keep=1)


def run_fit(recipe: Any, loaded: B.Loaded, harmful: list[str], harmless: list[str], clock: Clock, name: str,
            fast: bool) -> tuple[Any, Any, FitTimes, int]:
    times = FitTimes()
    steerer = recipe.steerers([times])[0]
    calls = 0
    with clock.stage(name):
        if fast:
            with fast_sweep() as shim:
                plan = steerer.fit(loaded.model, loaded.tokenizer, harmful, harmless)
            calls = shim.calls
        else:
            plan = steerer.fit(loaded.model, loaded.tokenizer, harmful, harmless)
    return plan, steerer, times, calls


def gate_section(plan: Any, model: Any, sets: dict[str, list[dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """Today's gate values per set (re-centred), as `evaluate_plan` records them."""
    return {name: gate_values(plan, model, batches, name.split("/", 1)[1]) for name, batches in sets.items()}


def gate_from_states(plan: Any, stats: dict[str, Any], sets: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The same gate values from the states `evaluate_mars` recorded (no second recording)."""
    from steerpeft.mars.calibration import MODALITY_INDEX

    step = mars_step(plan)
    layer = step.layers[0]
    values = {}
    for name in sets:
        modality = MODALITY_INDEX[name.split("/", 1)[1]]
        values[name] = trust_region_t(step.scaler, layer, stats["states"][name][layer], modality or None)
    return values


def compare_reports(fast: Any, slow: Any) -> dict[str, Any]:
    texts_total = texts_equal = 0
    score_diff = kl_diff = 0.0
    for condition, results in slow.rows.items():
        for set_name, expected in results.items():
            got = fast.rows[condition][set_name]
            if expected.texts is not None:
                texts_total += len(expected.texts)
                texts_equal += sum(a == b for a, b in zip(got.texts, expected.texts))
            score_diff = max(score_diff, max(abs(a - b) for a, b in zip(got.scores, expected.scores)))
            if expected.kl is not None:
                kl_diff = max(kl_diff, abs(got.kl - expected.kl))
    return {"same_conditions": list(fast.rows) == list(slow.rows), "texts_equal": texts_equal,
            "texts_total": texts_total, "max_score_diff": score_diff, "max_mean_kl_diff": kl_diff}


def changed_answers(report: Any) -> dict[str, int]:
    """Answers that differ from the unsteered ones, per condition (what 'can differ' means in practice)."""
    base = report.rows[report.baseline]
    return {condition: sum(a != b for name, result in results.items()
                           for a, b in zip(result.texts or [], base[name].texts or []))
            for condition, results in report.rows.items() if condition != report.baseline}


def compare_tables(fast: list[dict[str, Any]], slow: list[dict[str, Any]]) -> dict[str, Any]:
    by_layer = {row["layer"]: row for row in fast}
    return {
        "chosen_today": next(row["layer"] for row in slow if row["chosen"]),
        "chosen_fast": next(row["layer"] for row in fast if row["chosen"]),
        "max_kl_diff": max(abs(row["kl"] - by_layer[row["layer"]]["kl"]) for row in slow),
        "max_induce_diff": max(abs(row["induce"] - by_layer[row["layer"]]["induce"]) for row in slow),
        "layers": len(slow),
    }


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = B.common_parser(__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=None, help="eval max_new_tokens (default: the recipe's)")
    parser.add_argument("--prompts", type=int, default=12, help="prompts per class for random models (smoke)")
    parser.add_argument("--skip-today", action="store_true", help="time only the floors and the fast paths")
    parser.add_argument("--eval-batch-size", type=int, default=None, help="eval batch size (default: the recipe's)")
    args = B.finish_args(parser, argv, {"new_tokens": 4})
    if args.model not in ("smollm2", "tiny"):
        parser.error("--model must be smollm2 (the main job) or tiny (smoke)")
    clock = Clock()
    with clock.stage("load"):
        loaded = B.build_model(args.model, args.device, args.torch_dtype, args.seed)
    recipe = load_recipe("mars")
    if not loaded.real_weights:
        recipe = recipe.with_overrides(["fit.batch_size=4", "eval.batch_size=4"])
    if args.eval_batch_size:
        recipe = recipe.with_overrides([f"eval.batch_size={args.eval_batch_size}"])
    fit_options = recipe.config["fit"]
    eval_options = recipe.config["eval"]
    new_tokens = int(args.new_tokens or eval_options["max_new_tokens"])
    harmful, harmless = fit_prompts(loaded, args.prompts)
    steerer = recipe.steerers()[0]
    fit_batches = [b for prompts in (harmful, harmless)
                   for b in steerer.text_batches(loaded.model, loaded.tokenizer, prompts)]
    results: dict[str, Any] = {
        "benchmark": "main_job",
        "environment": B.environment(args.device),
        "settings": {"model": args.model, "dtype": args.dtype, "recipe": "mars", "fit_prompts": len(harmful) + len(harmless),
                     "fit_batch_size": fit_options["batch_size"], "validation_fraction": fit_options["validation_fraction"],
                     "eval_batch_size": eval_options["batch_size"], "max_new_tokens": new_tokens,
                     "num_layers": loaded.layout.num_layers, "smoke": args.smoke},
    }

    with clock.stage("floor_forward"):
        plain_forward(loaded, fit_batches)

    plan_fast, steerer_fast, times_fast, calls = run_fit(recipe, loaded, harmful, harmless, clock, "fit_fast", True)
    stages = clock.stages
    stages["recording_fast"] = {k: round(v, 3) for k, v in times_fast.recording.items()}
    stages["sweep_fast"] = times_fast.sweep()
    table_fast = plan_fast.metadata["steps"]["mars"]["layer_scores"]
    checks: dict[str, Any] = {"sweep_decision_steps": calls}
    plan_today = None
    if not args.skip_today:
        plan_today, _, times_today, _ = run_fit(recipe, loaded, harmful, harmless, clock, "fit_today", False)
        stages["recording_today"] = {k: round(v, 3) for k, v in times_today.recording.items()}
        stages["sweep_today"] = times_today.sweep()
        checks["fit"] = compare_tables(table_fast, plan_today.metadata["steps"]["mars"]["layer_scores"])
    plan = plan_today or plan_fast

    # Evaluation: the validation split the fit held out, as the pipeline evaluates it.
    _, harmful_val = steerer_fast.split(harmful)
    _, harmless_val = steerer_fast.split(harmless)
    sets = eval_sets(loaded.model, loaded.tokenizer, harmful_val, harmless_val, modalities=["text"],
                     batch_size=int(eval_options["batch_size"]))
    with clock.stage("floor_generate"), torch.no_grad():
        for batches in sets.values():
            for batch in batches:
                generate_texts(loaded.model, loaded.tokenizer, batch, new_tokens)
    slow = None
    if not args.skip_today:
        with clock.stage("eval_today"):
            slow = evaluate(loaded.model, loaded.tokenizer, sets, conditions(plan, loaded.model, "mars"),
                            max_new_tokens=new_tokens, progress=False)
            gate_today = gate_section(plan, loaded.model, sets)
    fast_reports = {}
    for label, share, stack in (("eval_reuse_rows", False, False), ("eval_reuse_rows_prefill", True, False),
                                ("eval_reuse_stacked", True, True)):
        stats: dict[str, Any] = {}
        with clock.stage(label):
            fast_reports[label] = evaluate_mars(loaded.model, loaded.tokenizer, sets, plan, name="mars",
                                                max_new_tokens=new_tokens, share_prefill=share, stack=stack,
                                                stats=stats)
            gate_fast = gate_from_states(plan, stats, sets)
        checks[label] = {"generated_rows": stats["generated"], "rows_per_condition": stats["rows"]}
        if slow is not None:
            checks[label].update(compare_reports(fast_reports[label], slow))
            checks[label]["max_gate_t_diff"] = max(float((gate_fast[n] - gate_today[n]).abs().max()) for n in sets)
    reference = slow or fast_reports["eval_reuse_stacked"]
    checks["answers_changed_vs_unsteered"] = changed_answers(reference)
    # Conditions that can differ from answers already made: those the reuse had to generate any row for.
    generated = checks["eval_reuse_stacked"]["generated_rows"]
    differ = sum(1 for condition, count in generated.items() if condition != "unsteered" and count)
    checks["eval_rows"] = sum(len(b["input_ids"]) for batches in sets.values() for b in batches)

    floor_fit, floor_eval = stages["floor_forward"], stages["floor_generate"]
    ratios: dict[str, dict[str, float]] = {}
    for name, floor in (("fit_fast", floor_fit), ("sweep_fast", floor_fit), ("recording_fast", floor_fit),
                        ("fit_today", floor_fit), ("sweep_today", floor_fit), ("recording_today", floor_fit),
                        ("eval_today", floor_eval), ("eval_reuse_rows", floor_eval),
                        ("eval_reuse_rows_prefill", floor_eval), ("eval_reuse_stacked", floor_eval)):
        if name in stages:
            ratios[name] = {unit: round(B.ratio(stages[name][unit], floor[unit]), 3) for unit in ("wall_s", "cpu_s")}
    results["stages"] = stages
    results["ratios_to_floor"] = ratios
    results["targets"] = {**{name: {"ratio_max": target, "cpu_ratio": ratios[name]["cpu_s"]}
                             for name, target in TARGETS.items()},
                          "eval_reuse_stacked": {"ratio_max": 1 + differ,
                                                 "cpu_ratio": ratios["eval_reuse_stacked"]["cpu_s"],
                                                 "conditions_that_differ": differ}}
    results["checks"] = checks
    job = ["load", "fit_fast", "eval_reuse_stacked"]
    results["job_fast"] = {unit: round(sum(stages[s][unit] for s in job), 3) for unit in ("wall_s", "cpu_s")}
    if "fit_today" in stages:
        today = ["load", "fit_today", "eval_today"]
        results["job_today"] = {unit: round(sum(stages[s][unit] for s in today), 3) for unit in ("wall_s", "cpu_s")}
    B.write_results(results, args.out)
    return results


if __name__ == "__main__":
    B.run_timed(main)
