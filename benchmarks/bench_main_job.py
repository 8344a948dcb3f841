"""The main job (`steerpeft run` with the `mars` recipe), stage by stage, priced against its floors.

Every stage runs the product's own code, in one process, on one model, and is timed in wall and
process-CPU seconds (the device synchronised around each stage; the only wrapper is a timer around the
MARS target calibration, `layer_targets`, which changes nothing it computes):

- `floor_forward`: one plain forward over the prompts the recipe's fit records (training and
  validation splits, in the fit's batches; `use_cache=False`, `logits_to_keep=1`).  For
  vision-language models also `floor_forward_media`: the neutral-media prompts the fit records;
- `fit`: `recipe.fit(model, processor, callbacks=[timer])`, split from its callbacks into
  `fit.recording_text` / `fit.recording_media` (recording per split), `fit.sweep` (the MARS
  selector's scores: separation, KL, induce, false triggers, validation refusal; its media recording
  and target calibration excluded), `fit.target` (where each scored layer's traversal ends: the
  bisection over the fit harmful prompts, in the selector and the scaler), `fit.calibrate` and `fit.rest`;
- `fit_slow` (`--compare`): the same with `steps.0.selector.shared_prefix=false` (one full
  forward per candidate plan); checks the same layer and table;
- `floor_generate`: one unsteered greedy generation over the evaluation sets the run builds
  (`steerpeft.run.evaluation.media_sets`: every modality the model takes, `eval.max_new_tokens`);
- `eval`: `evaluate_plan` as the run calls it (`eval.reuse` on), gate values included;
- `eval_slow` (`--compare`): `eval.reuse=false`; checks answers, scores, KL and gate values;
- `job` (`--job`, smollm2): `python -m steerpeft run mars` in a fresh process, as a user runs it
  (model conversion cached); `--job-cold` once more with an empty model cache (conversion included).

Targets (issue 13): fit <= 3 x `floor_forward`; the sweep's scores <= 1 x `floor_forward`; eval <=
(1 + conditions that can differ) x `floor_generate`, a condition "can differ" when it generated
any row (the rest reuse answers already made); the whole job <= 120 s wall on a quiet 2-core CPU
(<= 180 s with the conversion).  Ratios use CPU seconds on the CPU and wall seconds on a GPU.

Models: `smollm2` (the embedded SmolLM2-135M, the main job on a CPU); `tiny` (a random 4-layer
Llama with a word tokenizer built from the recipe's prompts: smoke); `7b-text` (random weights of
Qwen2.5-7B-Instruct's shape) and `7b-vl` (Qwen2.5-VL-7B's shape, text + neutral image + neutral
video), both built on the device with the real Qwen2.5 tokenizer from `--tokenizer`
(`benchmarks/copy_qwen_tokenizer.py` copies it); `--dry-run` shrinks their widths for a CPU check.

  python benchmarks/bench_main_job.py --model smollm2 --compare --job --threads 1 --out main-job-smollm2.json
  python benchmarks/bench_main_job.py --model 7b-text --compare --out main-job-7b-text.json      # GPU
  python benchmarks/bench_main_job.py --model 7b-vl --out main-job-7b-vl.json                    # GPU
  python benchmarks/bench_main_job.py --model 7b-vl --dry-run --device cpu                       # CPU check
  python benchmarks/bench_main_job.py --smoke                                                    # CI, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B

from steerpeft.callbacks import Callback
from steerpeft.errors import SteeringWarning
from steerpeft.evaluation import generate_texts
from steerpeft.evaluation.decision_prefix import prefix_supported
from steerpeft.inputs.batches import available_modalities, modality_batches
from steerpeft.inputs.modality import Modality
from steerpeft.mars import scaler as mars_scaler
from steerpeft.mars import selector as mars_selector
from steerpeft.recipes import Recipe, load_recipe
from steerpeft.run.evaluation import eval_batch_size, eval_prompts, evaluate_plan, media_sets

REPO = Path(__file__).resolve().parents[1]
MODELS = ("smollm2", "tiny", "7b-text", "7b-vl")
FIT_TARGET, SWEEP_TARGET = 3.0, 1.0
"""Ratios to `floor_forward`; the evaluation's target is (1 + conditions that can differ) x
`floor_generate`."""
JOB_TARGET_S, JOB_COLD_TARGET_S = 120.0, 180.0
RANDOM_WEIGHTS = ["steps.0.selector.on_no_layer=best"]
"""Random weights do not refuse: no layer is within MARS's limits, so take the best-separating one."""
SMOKE = ["data.limit=24", "eval.max_new_tokens=4"]
DRY_RUN = ["data.limit=16", "eval.max_new_tokens=4"]
TEXT_SPLITS = ("positive", "negative", "positive_validation", "negative_validation")
"""The recording splits of the text prompts; every other split a fit records is neutral media."""
UNITS = ("wall_s", "cpu_s")


# ---------------------------------------------------------------------------------------------
# Timing


def now(device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds, after the device has finished its queued work."""
    B.synchronize(device)
    return time.perf_counter(), time.process_time()


def span(start: tuple[float, float], end: tuple[float, float]) -> dict[str, float]:
    return {"wall_s": round(end[0] - start[0], 3), "cpu_s": round(end[1] - start[1], 3)}


class Clock:
    """Wall and process-CPU seconds of named stages (and peak device memory on a GPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stages: dict[str, dict[str, Any]] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        B.log(f"{name} ...")
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = now(self.device)
        yield
        entry: dict[str, Any] = span(start, now(self.device))
        if self.device.type == "cuda":
            entry["peak_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
        self.stages[name] = entry
        B.log(f"{name}: {entry['wall_s']:.2f} s wall, {entry['cpu_s']:.2f} s CPU")

    def repeated(self, name: str, fn: Callable[[], Any], repeats: int) -> None:
        """`fn` timed `repeats` times; the stage is the median of each unit (every run kept in `runs`)."""
        runs = []
        for index in range(repeats):
            with self.stage(f"{name}#{index}"):
                fn()
            runs.append(self.stages.pop(f"{name}#{index}"))
        entry: dict[str, Any] = {
            unit: round(statistics.median(run[unit] for run in runs), 3) for unit in UNITS
        }
        if repeats > 1:
            entry["runs"] = runs
        self.stages[name] = entry


class FitTimer(Callback):
    """Where one `Recipe.fit` spends its time, read from its callbacks.

    Recording spans are summed per kind (text splits vs neutral-media splits); the selector's own
    time is from `on_directions_computed` to `on_layer_selected` minus the recording inside it (the
    MARS selector records the neutral-media prompts for its false-trigger check).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks: dict[str, tuple[float, float]] = {}
        self.recording = {"text": [0.0, 0.0], "media": [0.0, 0.0]}
        self.target = {"select": [0.0, 0.0], "calibrate": [0.0, 0.0]}
        self._phase = "select"
        self.splits: dict[str, dict[str, float]] = {}
        self._open: tuple[float, float] | None = None
        self._scored = 0

    def _recorded(self) -> tuple[float, float]:
        return tuple(sum(kind[i] for kind in self.recording.values()) for i in (0, 1))  # type: ignore[return-value]

    def on_fit_start(self, runner: Any, model: Any) -> None:
        self.marks["start"] = now(self.device)

    def on_record_start(self, runner: Any, split: str, total: int) -> None:
        self._open = now(self.device)

    def on_record_end(self, runner: Any, split: str, activations: Any) -> None:
        assert self._open is not None
        taken = span(self._open, now(self.device))
        kind = self.recording["text" if split in TEXT_SPLITS else "media"]
        kind[0] += taken["wall_s"]
        kind[1] += taken["cpu_s"]
        self.splits[split] = taken

    def on_directions_computed(self, runner: Any, directions: Any) -> None:
        self.marks["directions"] = now(self.device)
        self.marks["recorded_before_select"] = self._recorded()

    def on_layer_scored(self, runner: Any, layer: int, scores: dict[str, Any]) -> None:
        self._scored += 1

    @contextlib.contextmanager
    def timing_targets(self) -> Iterator[None]:
        """Time the MARS target calibration (`layer_targets`) on its own: a job the sweep's scores do not
        include (the bisection of where each layer's traversal ends), charged to the phase it runs in."""
        modules = [mars_selector, mars_scaler]
        originals = [module.layer_targets for module in modules]

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = now(self.device)
            try:
                return originals[0](*args, **kwargs)
            finally:
                taken = span(start, now(self.device))
                bucket = self.target[self._phase]
                bucket[0] += taken["wall_s"]
                bucket[1] += taken["cpu_s"]

        for module in modules:
            module.layer_targets = timed
        try:
            yield
        finally:
            for module, original in zip(modules, originals, strict=True):
                module.layer_targets = original

    def on_layer_selected(self, runner: Any, selection: Any) -> None:
        self._phase = "calibrate"
        self.marks["selected"] = now(self.device)
        self.marks["recorded_after_select"] = self._recorded()

    def on_scaler_calibrated(self, runner: Any, scaler: Any) -> None:
        self.marks["calibrated"] = now(self.device)

    def on_fit_end(self, runner: Any, plan: Any) -> None:
        self.marks["end"] = now(self.device)

    def stages(self, prefix: str) -> dict[str, dict[str, float]]:
        m = self.marks
        inside = [
            after - before for after, before in zip(m["recorded_after_select"], m["recorded_before_select"])
        ]
        select = span(m["directions"], m["selected"])
        in_select, in_calibrate = self.target["select"], self.target["calibrate"]
        sweep = {unit: round(select[unit] - inside[i] - in_select[i], 3) for i, unit in enumerate(UNITS)}
        calibrate = span(m["selected"], m["calibrated"])
        calibrate = {unit: round(calibrate[unit] - in_calibrate[i], 3) for i, unit in enumerate(UNITS)}
        target = {unit: round(in_select[i] + in_calibrate[i], 3) for i, unit in enumerate(UNITS)}
        recorded = [kind[0] + kind[1] for kind in zip(*self.recording.values())]
        total = span(m["start"], m["end"])
        parts = {
            "recording_text": {
                "wall_s": round(self.recording["text"][0], 3), "cpu_s": round(self.recording["text"][1], 3),
            },
            "recording_media": {
                "wall_s": round(self.recording["media"][0], 3), "cpu_s": round(self.recording["media"][1], 3),
            },
            "sweep": sweep,
            "target": target,
            "calibrate": calibrate,
        }
        accounted = [
            recorded[i] + sweep[unit] + target[unit] + calibrate[unit] for i, unit in enumerate(UNITS)
        ]
        parts["rest"] = {unit: round(total[unit] - accounted[i], 3) for i, unit in enumerate(UNITS)}
        if not self.recording["media"][0]:
            del parts["recording_media"]
        return {f"{prefix}.{name}": value for name, value in parts.items()}


class RowCounter(Callback):
    """Rows each evaluation condition scored (with `evaluate`, every condition generates every row)."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}

    def on_eval_batch_end(self, runner: Any, condition: str, set_name: str, rows: int) -> None:
        self.rows[condition] = self.rows.get(condition, 0) + rows


# ---------------------------------------------------------------------------------------------
# The model and the recipe


def build(args: argparse.Namespace) -> B.Loaded:
    if args.model == "smollm2":
        return B.build_model("smollm2", args.device, args.torch_dtype, args.seed)
    if args.model == "tiny":
        recipe = load_recipe("mars")
        positive, negative = recipe.prompts()
        return B.build_tiny_chat(args.device, args.torch_dtype, [*positive, *negative], args.seed)
    builder = B.build_qwen_text if args.model == "7b-text" else B.build_qwen_vl
    return builder(
        args.device, args.torch_dtype, args.tokenizer, args.seed, layers=args.layers, dry_run=args.dry_run
    )


def recipe_for(args: argparse.Namespace, loaded: B.Loaded) -> tuple[Recipe, list[str]]:
    """The `mars` recipe with the benchmark's overrides (recorded in the results)."""
    overrides = [] if loaded.real_weights else list(RANDOM_WEIGHTS)
    if args.smoke:
        overrides += SMOKE
    elif args.dry_run:
        overrides += DRY_RUN
    overrides += list(args.set)
    return load_recipe("mars", overrides), overrides


def fit_batches(recipe: Recipe, loaded: B.Loaded) -> list[dict[str, torch.Tensor]]:
    """The text batches `Recipe.fit` records: each split of step 0, in the fit's batch size."""
    steerer = recipe.steerers()[0]
    splits = recipe.split_prompts(0)
    return [batch for name in TEXT_SPLITS if splits[name]
            for batch in steerer.text_batches(loaded.model, loaded.tokenizer, splits[name])]


def media_fit_batches(recipe: Recipe, loaded: B.Loaded) -> list[dict[str, Any]]:
    """The neutral-media batches the MARS calibration records (harmless training and held-out prompts
    per medium, plus the harmful ones with `media.segment: modality`); empty for text models."""
    options, splits = recipe.section("media"), recipe.split_prompts(0)
    media = [m for m in available_modalities(loaded.model, loaded.tokenizer) if m != Modality.TEXT.label]
    if options.modalities:
        media = [m for m in media if m in options.modalities]
    held_out = splits["negative_validation"] or splits["negative"]
    parts = [(splits["negative"], 0), (held_out, 1000)]
    if options.segment == "modality":
        parts.append((splits["positive"], 2000))
    device = loaded.device
    return [
        batch for modality in media for prompts, seed in parts
        for batch in modality_batches(
            loaded.tokenizer, prompts, modality, batch_size=recipe.section("fit").batch_size,
            seed=options.seed + seed, video_frames=options.video_frames, device=device,
        )
    ]


@torch.no_grad()
def plain_forward(model: Any, batches: Sequence[dict[str, Any]]) -> None:
    for batch in batches:
        model(**batch, use_cache=False, logits_to_keep=1)


@torch.no_grad()
def plain_generation(loaded: B.Loaded, sets: dict[str, list[dict[str, Any]]], max_new_tokens: int) -> None:
    for batches in sets.values():
        for batch in batches:
            generate_texts(loaded.model, loaded.tokenizer, batch, max_new_tokens)


@torch.no_grad()
def warm_up(
    loaded: B.Loaded, batches: Sequence[dict[str, Any]], sets: dict[str, list[dict[str, Any]]]
) -> None:
    """One forward of the first fit batch and of the first batch of every set, one short generation:
    kernels, allocator and (on a GPU) the CUDA context are ready before anything is timed."""
    plain_forward(loaded.model, [batches[0], *(b[0] for b in sets.values() if b)])
    first = next(b[0] for b in sets.values() if b)
    generate_texts(loaded.model, loaded.tokenizer, first, 2)


# ---------------------------------------------------------------------------------------------
# Checks


def layer_table(plan: Any) -> list[dict[str, Any]]:
    return plan.metadata["steps"]["mars"]["layer_scores"]


def compare_tables(fast: list[dict[str, Any]], slow: list[dict[str, Any]]) -> dict[str, Any]:
    """The selector's table from one shared prefix vs one full forward per candidate."""
    by_layer = {row["layer"]: row for row in fast}

    def diff(key: str) -> float:
        """Largest difference over the layers both measured (inf where only one did: a different
        exclusion)."""
        pairs = [(row.get(key), by_layer[row["layer"]].get(key)) for row in slow]
        gaps = [abs(float(a) - float(b)) if a is not None and b is not None else (0.0 if a is b else math.inf)
                for a, b in pairs]
        return max(gaps, default=0.0)

    return {
        "layers": len(slow),
        "same_layers": sorted(by_layer) == sorted(row["layer"] for row in slow),
        "chosen": next(row["layer"] for row in fast if row["chosen"]),
        "chosen_slow": next(row["layer"] for row in slow if row["chosen"]),
        "same_layer": next(row["layer"] for row in fast if row["chosen"])
        == next(r["layer"] for r in slow if r["chosen"]),
        "max_kl_diff": diff("kl"),
        "max_induce_diff": diff("induce"),
        "max_separation_diff": diff("separation"),
        "max_tau_diff": diff("tau"),
        "same_exclusions": all(row["excluded_by"] == by_layer[row["layer"]]["excluded_by"] for row in slow),
    }


def compare_reports(fast: Any, slow: Any) -> dict[str, Any]:
    """Answers, first-token scores and KL of the reuse evaluation vs every condition run in full."""
    total = equal = 0
    score_diff = kl_diff = 0.0
    unequal: dict[str, int] = {}
    for condition, results in slow.rows.items():
        for set_name, expected in results.items():
            got = fast.rows[condition][set_name]
            if expected.texts is not None:
                same = sum(a == b for a, b in zip(got.texts or [], expected.texts))
                total += len(expected.texts)
                equal += same
                if same != len(expected.texts):
                    unequal[f"{condition} | {set_name}"] = len(expected.texts) - same
            score_diff = max([score_diff, *(abs(a - b) for a, b in zip(got.scores, expected.scores))])
            if expected.kl is not None and got.kl is not None:
                kl_diff = max(kl_diff, abs(got.kl - expected.kl))
    return {"same_conditions": list(fast.rows) == list(slow.rows), "texts_equal": equal, "texts_total": total,
            "unequal_texts": unequal, "max_score_diff": score_diff, "max_mean_kl_diff": kl_diff}


def compare_gates(fast: dict[str, Any] | None, slow: dict[str, Any] | None) -> dict[str, Any]:
    """Gate values t (re-centred and raw) per set: from the reuse path's decision states vs a recording."""
    if fast is None or slow is None:
        return {"present": fast is not None, "present_slow": slow is not None}
    diff, same_share = 0.0, True
    for set_name, entry in slow["sets"].items():
        for kind in ("recentered", "raw"):
            expected, got = entry[kind], fast["sets"][set_name][kind]
            if expected is None:
                continue
            diff = max([diff, *(abs(a - b) for a, b in zip(got["values"], expected["values"]))])
            same_share &= got["above_tau"] == expected["above_tau"]
    return {"same_layer": fast["layer"] == slow["layer"], "tau_diff": abs(fast["tau"] - slow["tau"]),
            "max_t_diff": diff, "same_share_above_tau": same_share}


def mean_kl(report: Any) -> dict[str, float]:
    """Each steered condition's first-token KL from the unsteered model, averaged over its sets (does it
    steer?)."""
    return {condition: float(statistics.fmean(result.kl for result in results.values()))
            for condition, results in report.rows.items() if condition != report.baseline}


def changed_answers(report: Any) -> dict[str, int]:
    """Rows whose answer differs from the unsteered one, per condition (does each condition steer?)."""
    base = report.rows[report.baseline]
    return {condition: sum(a != b for name, result in results.items()
                           for a, b in zip(result.texts or [], base[name].texts or []))
            for condition, results in report.rows.items() if condition != report.baseline}


# ---------------------------------------------------------------------------------------------
# The whole job, as a user runs it


def run_job(threads: int | None, cold: bool) -> dict[str, Any]:
    """`python -m steerpeft run mars` in a fresh process: wall and CPU seconds (the child's user + system),
    and the per-stage timings of its metrics.json.  `cold`: with an empty model cache (conversion
    included)."""
    with tempfile.TemporaryDirectory(prefix="bench-main-job-") as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "steerpeft", "run", "mars", "--out", str(out), "-q"]
        env = dict(os.environ, TQDM_DISABLE="1", HF_HUB_OFFLINE="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        if cold:
            env["STEERPEFT_CACHE"] = str(Path(tmp) / "cache")
        B.log(f"job{' (empty model cache)' if cold else ''}: {shlex.join(command)} ...")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(command, check=False, env=env, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        result: dict[str, Any] = {
            "command": shlex.join(["python", *command[1:5], "DIR", "-q"]), "cold_cache": cold,
            "returncode": done.returncode, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "threads": threads,
        }
        metrics = out / "metrics.json"
        if done.returncode == 0 and metrics.is_file():
            record = json.loads(metrics.read_text())
            result["timings"] = {k: round(float(v), 3) for k, v in record.get("timings", {}).items()}
            result["eval_reuse"] = record.get("eval", {}).get("reuse")
        else:
            result["stderr_tail"] = done.stderr[-3000:]
        B.log(
            f"job: rc {done.returncode}, {wall:.1f} s wall, {cpu:.1f} s CPU, timings {result.get('timings')}"
        )
        return result


# ---------------------------------------------------------------------------------------------
# Ratios and targets


def ratio_entry(stage: dict[str, float], floor: dict[str, float]) -> dict[str, float]:
    return {unit: round(B.ratio(stage[unit], floor[unit]), 3) for unit in UNITS}


def ratios_and_targets(stages: dict[str, dict[str, Any]], unit: str, differ: list[str] | None,
                       jobs: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each stage over its floor, and the targets of what was measured (a run cut short has fewer).

    `differ`: the evaluation conditions that generated any row (None: no evaluation yet).
    """
    forward, generate = stages.get("floor_forward"), stages.get("floor_generate")
    ratios: dict[str, Any] = {}
    for name, entry in stages.items():
        if forward and name.startswith(("fit", "floor_forward_media")):
            ratios[name] = ratio_entry(entry, forward)
        elif generate and name.startswith("eval") and name != "eval_inputs":
            ratios[name] = ratio_entry(entry, generate)
    if forward and "floor_forward_media" in stages and "fit" in stages:
        both = {u: forward[u] + stages["floor_forward_media"][u] for u in UNITS}
        ratios["fit (floor: text + media prompts)"] = ratio_entry(stages["fit"], both)
    other = "cpu_s" if unit == "wall_s" else "wall_s"
    targets: dict[str, Any] = {}
    goals = [("fit", "fit", FIT_TARGET), ("sweep", "fit.sweep", SWEEP_TARGET),
             ("fit_vs_all_prompts", "fit (floor: text + media prompts)", FIT_TARGET)]
    if differ is not None:
        goals.append(("eval", "eval", 1.0 + len(differ)))
    for name, stage, limit in goals:
        if stage in ratios:
            measured = ratios[stage]
            targets[name] = {"stage": stage, "ratio_max": limit, "ratio": measured[unit], "unit": unit,
                             "met": measured[unit] <= limit, "other_unit_ratio": measured[other]}
    if "eval" in targets:
        targets["eval"]["conditions_that_differ"] = differ
    for name, limit in (("job", JOB_TARGET_S), ("job_cold", JOB_COLD_TARGET_S)):
        if name in jobs and jobs[name]["returncode"] == 0:
            job = jobs[name]
            targets[name] = {"seconds_max": limit, "wall_s": job["wall_s"], "cpu_s": job["cpu_s"],
                             "met_wall": job["wall_s"] <= limit, "met_cpu": job["cpu_s"] <= limit}
    return ratios, targets


# ---------------------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="smollm2",
                        help="smollm2: the embedded model (CPU main job); tiny: smoke; 7b-text / 7b-vl: "
                             "random Qwen2.5-7B / Qwen2.5-VL-7B shapes built on the device")
    parser.add_argument(
        "--compare", action="store_true",
        help="also fit_slow (selector.shared_prefix=false) and eval_slow (eval.reuse=false), with checks",
    )
    parser.add_argument(
        "--job", action="store_true", help="time `python -m steerpeft run mars` (smollm2 only)"
    )
    parser.add_argument(
        "--job-cold", action="store_true", help="with --job: once more with an empty model cache"
    )
    parser.add_argument(
        "--tokenizer", default=str(B.QWEN_TOKENIZER_DIR),
        help="folder with the Qwen2.5 tokenizer files (7b-*; see benchmarks/copy_qwen_tokenizer.py)",
    )
    parser.add_argument(
        "--layers", type=int, default=None, help="decoder layers of the 7b-* shapes (default 28)"
    )
    parser.add_argument(
        "--dry-run", action="store_true",
        help="7b-*: toy widths, 4 layers, 16 prompts per set, 4 new tokens (a CPU check of the GPU modes)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override on top of the benchmark's (e.g. eval.max_new_tokens=8)")
    parser.add_argument(
        "--floor-repeats", type=int, default=1, help="time each floor this many times (median)"
    )
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument(
        "--dtype", choices=sorted(B.DTYPES), default=None, help="default bfloat16 on GPU, float32 on CPU"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny model on the CPU with --compare: seconds (CI)"
    )
    parser.add_argument("--out", default=None, help="write the JSON results here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.device, args.compare = "tiny", args.device or "cpu", True
        args.threads = args.threads or 1
    if args.job and args.model != "smollm2":
        parser.error("--job runs the recipe's own model: use it with --model smollm2")
    if args.dry_run and not args.model.startswith("7b"):
        parser.error("--dry-run shrinks the 7b-* shapes")
    if args.dry_run and args.layers is None:
        args.layers = 4
    args.device = torch.device(args.device or ("cuda:0" if torch.cuda.is_available() else "cpu"))
    if args.device.type == "cuda" and args.device.index is None:
        args.device = torch.device("cuda", 0)
    args.dtype = args.dtype or ("float32" if args.device.type == "cpu" else "bfloat16")
    args.torch_dtype = B.DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.type == "cuda":
        torch.cuda.set_device(args.device)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the stages; the results are written even when a stage fails (`complete: false`, `error`)."""
    args = parse(argv)
    results: dict[str, Any] = {
        "benchmark": "main_job", "environment": B.environment(args.device), "complete": False,
    }
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `timeout` sends SIGTERM: keep what was measured
    try:
        measure(args, results)
    except BaseException as error:
        results["error"] = f"{type(error).__name__}: {error}"[:2000]
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        if "settings" in results:
            differ = results["checks"].get("eval", {}).get("conditions_that_differ")
            results["ratios_to_floor"], results["targets"] = ratios_and_targets(
                results["stages"], results["settings"]["primary_unit"], differ, results.get("jobs", {}))
        results["environment"]["load_average_end"] = _load()
        B.write_results(results, args.out)
    for name, target in results.get("targets", {}).items():
        B.log(f"target {name}: {json.dumps(target)}")
    return results


def measure(args: argparse.Namespace, results: dict[str, Any]) -> None:
    clock = Clock(args.device)
    B.log(f"main job benchmark: {args.model} on {args.device} ({args.dtype}), load average {_load()}")
    with clock.stage("load"):
        loaded = build(args)
    recipe, overrides = recipe_for(args, loaded)
    if not loaded.real_weights:  # every fit says no layer is within the limits: expected, see RANDOM_WEIGHTS
        warnings.filterwarnings("ignore", category=SteeringWarning)
    model, processor = loaded.model, loaded.tokenizer
    options, media = recipe.section("eval"), recipe.section("media")
    harmful, harmless, source = eval_prompts(recipe)
    batch_size = eval_batch_size(recipe)
    batches = fit_batches(recipe, loaded)
    media_batches = media_fit_batches(recipe, loaded)
    with clock.stage("eval_inputs"):  # evaluate_plan builds these again, inside the `eval` stage
        sets, modalities = media_sets(model, processor, harmful, harmless, batch_size=batch_size, media=media)
    prefix = prefix_supported(model)
    config = getattr(model.config, "text_config", model.config)
    vision = getattr(model.config, "vision_config", None)
    results["settings"] = {
        "model": args.model, "model_id": model.config._name_or_path, "dtype": args.dtype,
        "device": str(args.device), "parameters": B.parameter_count(model),
        "num_layers": loaded.layout.num_layers, "hidden_size": loaded.layout.hidden_size,
        "intermediate_size": getattr(config, "intermediate_size", None),
        "vocab_size": getattr(config, "vocab_size", None),
        "vision": None if vision is None
        else {
            k: getattr(vision, k, None) for k in ("depth", "hidden_size", "intermediate_size", "num_heads")
        },
        "dry_run": args.dry_run, "smoke": args.smoke, "recipe": "mars", "overrides": overrides,
        "fit_prompts": sum(len(b["input_ids"]) for b in batches), "fit_batches": len(batches),
        "fit_media_prompts": sum(len(b["input_ids"]) for b in media_batches),
        "fit_batch_size": recipe.section("fit").batch_size, "eval_prompts": source,
        "eval_rows": {
            name: sum(len(b["input_ids"]) for b in set_batches) for name, set_batches in sets.items()
        },
        "eval_batch_size": batch_size, "max_new_tokens": options.max_new_tokens, "modalities": modalities,
        "prefix_supported": prefix, "threads": torch.get_num_threads(),
        "primary_unit": "wall_s" if args.device.type == "cuda" else "cpu_s",
    }
    B.log(f"{results['settings']['parameters'] / 1e9:.3f} B parameters, {loaded.layout.num_layers} layers, "
          f"modalities {modalities}, {results['settings']['fit_prompts']} fit prompts ({len(batches)} "
          f"batches), {sum(results['settings']['eval_rows'].values())} eval rows, decision prefix supported: "
          f"{prefix}")
    results["stages"], checks = clock.stages, {}
    results["checks"] = checks
    with clock.stage("warmup"):
        warm_up(loaded, batches, sets)

    clock.repeated("floor_forward", lambda: plain_forward(model, batches), args.floor_repeats)
    if media_batches:
        clock.repeated("floor_forward_media", lambda: plain_forward(model, media_batches), args.floor_repeats)
    timer = FitTimer(args.device)
    with clock.stage("fit"), timer.timing_targets():
        plan = recipe.fit(model, processor, callbacks=[timer])
    clock.stages.update(timer.stages("fit"))
    checks["fit"] = {
        "chosen": plan.metadata["steps"]["mars"]["selected_layers"], "recorded_splits": timer.splits,
        "layers_scored": timer._scored,
    }
    if args.compare:
        if prefix:
            slow_recipe = recipe.with_overrides(["steps.0.selector.shared_prefix=false"])
            slow_timer = FitTimer(args.device)
            with clock.stage("fit_slow"), slow_timer.timing_targets():
                slow_plan = slow_recipe.fit(model, processor, callbacks=[slow_timer])
            clock.stages.update(slow_timer.stages("fit_slow"))
            checks["fit"].update(compare_tables(layer_table(plan), layer_table(slow_plan)))
        else:
            checks["fit"]["slow"] = (
                "skipped: no decision prefix for this model, so the fit already ran full forwards"
            )

    clock.repeated(
        "floor_generate", lambda: plain_generation(loaded, sets, options.max_new_tokens), args.floor_repeats
    )
    counter = RowCounter()
    with clock.stage("eval"):
        report, gate, _, reuse = evaluate_plan(
            plan, model, processor, harmful, harmless, name=recipe.name, options=options,
            batch_size=batch_size, media=media, progress=False, callbacks=[counter],
        )
    total_rows = sum(results["settings"]["eval_rows"].values())
    generated = (
        reuse["generated"] if reuse
        else {condition: counter.rows.get(condition, 0) for condition in report.rows}
    )
    differ = [condition for condition, rows in generated.items() if condition != report.baseline and rows]
    checks["eval"] = {
        "path": "evaluate_mars (reuse)" if reuse else "evaluate (every condition in full)",
        "rows_per_condition": reuse["rows"] if reuse else total_rows, "generated_rows": generated,
        "conditions_that_differ": differ, "answers_changed_vs_unsteered": changed_answers(report),
        "mean_kl_vs_unsteered": mean_kl(report),
    }
    if args.compare:
        if reuse:
            slow_options = recipe.with_overrides(["eval.reuse=false"]).section("eval")
            with clock.stage("eval_slow"):
                slow_report, slow_gate, _, _ = evaluate_plan(
                    plan, model, processor, harmful, harmless, name=recipe.name, options=slow_options,
                    batch_size=batch_size, media=media, progress=False, callbacks=[],
                )
            checks["eval"].update(compare_reports(report, slow_report))
            checks["eval"]["gate"] = compare_gates(gate, slow_gate)
        else:
            checks["eval"]["slow"] = (
                "skipped: the run already evaluated every condition in full (no reuse here)"
            )

    jobs: dict[str, dict[str, Any]] = {}
    if args.job:
        jobs["job"] = run_job(args.threads, cold=False)
        if args.job_cold:
            jobs["job_cold"] = run_job(args.threads, cold=True)
    results["jobs"] = jobs
    results["complete"] = True


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


if __name__ == "__main__":
    B.run_timed(main)
