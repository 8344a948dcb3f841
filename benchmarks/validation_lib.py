"""Helpers of `validate_mars.py`: held-out prompt sets, cached fits and evaluations, per-set summaries.

Everything a validation run computes is written to disk as soon as it exists (a fitted plan, one
evaluation call, one prompt set of a reused-answer evaluation), so an interrupted run resumes where
it stopped; `Store(fresh=True)` ignores what is there and recomputes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from steerpeft.evaluation.decision_prefix import DecisionPrefix, prefix_supported
from steerpeft.evaluation.first_token import first_token_refusal_score, refusal_token_ids
from steerpeft.evaluation.judge import is_refusal
from steerpeft.evaluation.kl import first_token_kl
from steerpeft.evaluation.reuse import DEFAULT_MARGIN, GenerationPrefix, generate_rows, rows_plan_can_change
from steerpeft.evaluation.runs import decision_logits
from steerpeft.inputs.modality import Modality
from steerpeft.mars.evaluation import decision_states, mars_step
from steerpeft.mars.evaluation_reuse import plan_row_modalities
from steerpeft.mars.scaler import TrustRegionScaler
from steerpeft.plan import Plan
from steerpeft.recipes import Recipe
from steerpeft.report.metrics import gate_summary, plan_section, plan_warnings, step_tau

HARMBENCH = Path("data/harmbench/harmbench_standard.txt")
BENIGN = Path("data/benign-anchors/benign_anchors_v1.json")
BENIGN_PLAIN = 30
"""benign_anchors_v1.json: 30 plain instructions first, then 20 XSTest-style hard negatives."""


# ---------------------------------------------------------------------------
# Prompts


@dataclass
class Prompts:
    """Held-out harmful and harmless prompts, each with the name of the set it came from."""

    harmful: list[str] = field(default_factory=list)
    harmful_source: list[str] = field(default_factory=list)
    harmless: list[str] = field(default_factory=list)
    harmless_source: list[str] = field(default_factory=list)

    def add(self, label: str, prompts: Sequence[str], source: str | Sequence[str]) -> None:
        sources = [source] * len(prompts) if isinstance(source, str) else list(source)
        getattr(self, label).extend(prompts)
        getattr(self, f"{label}_source").extend(sources)

    def to_dict(self) -> dict[str, list[str]]:
        return {"harmful": self.harmful, "harmful_source": self.harmful_source,
                "harmless": self.harmless, "harmless_source": self.harmless_source}


def evenly(items: Sequence[Any], count: int | None) -> list[Any]:
    """`count` items spread evenly over `items` (all when None or larger): deterministic, no seed."""
    if count is None or count >= len(items):
        return list(items)
    return [items[(index * len(items)) // count] for index in range(count)]


def held_out_prompts(recipe: Recipe, shared: Path | None, *, builtin: int | None, harmbench: int | None,
                     benign: int | None) -> Prompts:
    """The built-in test split (never seen by the fit) plus, when `shared` is given, HarmBench and the
    benign anchors (never seen either: the fit reads the built-in prompts only)."""
    splits = recipe.split_prompts()
    prompts = Prompts()
    prompts.add("harmful", evenly(splits["positive_test"], builtin), "builtin test")
    prompts.add("harmless", evenly(splits["negative_test"], builtin), "builtin test")
    if shared is not None:
        lines = [line.strip() for line in (shared / HARMBENCH).read_text().splitlines() if line.strip()]
        prompts.add("harmful", evenly(lines, harmbench), "HarmBench")
        anchors = json.loads((shared / BENIGN).read_text())["benign"]
        labelled = [
            (text, "benign plain" if i < BENIGN_PLAIN else "benign XSTest-style")
            for i, text in enumerate(anchors)
        ]
        chosen = evenly(labelled, benign)
        prompts.add("harmless", [text for text, _ in chosen], [source for _, source in chosen])
    return prompts


# ---------------------------------------------------------------------------
# Storage


class Store:
    """JSON files and saved plans of one model under `folder`; `fresh` ignores what is already there."""

    def __init__(self, folder: Path, fresh: bool = False) -> None:
        self.folder = folder
        self.fresh = fresh
        folder.mkdir(parents=True, exist_ok=True)
        self._written: set[str] = set()

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def read(self, name: str) -> dict[str, Any] | None:
        path = self.path(name)
        if (self.fresh and name not in self._written) or not path.exists():
            return None
        return json.loads(path.read_text())

    def write(self, name: str, data: Mapping[str, Any]) -> None:
        path = self.path(name)
        staging = path.with_suffix(".json.tmp")
        staging.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(staging, path)
        self._written.add(name)

    def plan_dir(self, condition: str) -> Path:
        return self.folder / "plans" / condition


def slug(condition: str) -> str:
    return condition.replace(" ", "-").replace("(", "").replace(")", "")


# ---------------------------------------------------------------------------
# Fits


def plan_info(plan: Plan) -> dict[str, Any]:
    """Chosen layer, tau, target T and the selector's reason: what the report tables show."""
    section = plan_section(plan)
    step = mars_step(plan)
    info: dict[str, Any] = {"layer": section["chosen_layer"], "tau": section["tau"], "target": None,
                            "num_layers": section["num_layers"], "reason": section["reason"],
                            "warnings": plan_warnings(section)}
    main = next((s for s in section.get("steps", []) if s.get("name") == section.get("main_step")), {})
    if (main.get("selector") or {}).get("name") == "bypass":  # the report explains the choice from it
        info["layer_scores"] = main.get("layer_scores")
    if step is not None and isinstance(step.scaler, TrustRegionScaler):
        layer = step.layers[0]
        info.update(layer=layer, tau=step_tau(step), target=float(step.scaler.regions[layer].target),
                    form=step.scaler.form, gate=step.scaler.gate, target_mode=step.scaler.target)
    return info


def fit_cached(store: Store, condition: str, recipe: Recipe, overrides: Sequence[str], model: Any,
               processor: Any, log: Callable[[str], None]) -> tuple[Plan, dict[str, Any]]:
    """`recipe.fit(model, processor)` once; later runs load the saved plan and its recorded fit time."""
    key = f"fit-{slug(condition)}"
    record = store.read(key)
    if record is not None and record.get("overrides") != list(overrides):
        log(f"{condition}: the cached fit used {record.get('overrides')}, not {list(overrides)}: refitting")
        record = None
    if record is not None and (store.plan_dir(slug(condition)) / "plan.json").exists():
        log(
            f"{condition}: fitted plan from {store.plan_dir(slug(condition))} (fit took "
            f"{record['fit_s']:.0f} s)"
        )
        return Plan.load(store.plan_dir(slug(condition))), record
    log(f"{condition}: fitting recipe {recipe.name!r} {list(overrides)}")
    start = time.perf_counter()
    plan = recipe.fit(model, processor)
    seconds = time.perf_counter() - start
    plan.save(store.plan_dir(slug(condition)))
    record = {"condition": condition, "recipe": recipe.name, "overrides": list(overrides), "fit_s": seconds,
              "plan": plan_info(plan)}
    store.write(key, record)
    log(f"{condition}: fitted in {seconds:.0f} s: {record['plan']}")
    return plan, record


# ---------------------------------------------------------------------------
# Per-set summaries


def set_summary(refusals: Sequence[bool] | None, texts: Sequence[str] | None, kl: float | None,
                scores: Sequence[float]) -> dict[str, Any]:
    """k of n refused (keyword judge), the rate, mean first-token KL and score, and the answers."""
    n = len(scores)
    k = None if refusals is None else int(sum(bool(r) for r in refusals))
    return {
        "n": n,
        "k": k,
        "rate": None if k is None else k / n,
        "kl": None if kl is None else float(kl),
        "score": float(sum(scores) / n),
        "refusals": None if refusals is None else [bool(r) for r in refusals],
        "texts": None if texts is None else list(texts),
    }


def report_rows(report: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """An `EvalReport` as condition -> set -> `set_summary`."""
    return {condition: {name: set_summary(r.refusals, r.texts, r.kl, r.scores) for name, r in results.items()}
            for condition, results in report.rows.items()}


def gate_of_sets(plan: Plan, states: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Share of rows whose gate opens per set (re-centred, and raw for media sets), as `evaluate_plan`
    reports."""
    step = mars_step(plan)
    if step is None or step_tau(step) is None:
        return {}
    tau, layer = float(step_tau(step)), step.layers[0]
    sets = {}
    for set_name, recorded in states.items():
        modality = Modality.named(set_name.split("/", 1)[1])
        recentered = step.scaler.gate_of_states(layer, recorded, torch.tensor(int(modality)))
        raw = step.scaler.gate_of_states(layer, recorded, None) if modality is not Modality.TEXT else None
        sets[set_name] = {
            "recentered": gate_summary(recentered, tau),
            "raw": None if raw is None else gate_summary(raw, tau),
        }
    return {"layer": layer, "tau": tau, "sets": sets}


# ---------------------------------------------------------------------------
# A MARS plan evaluated against cached unsteered answers


@torch.no_grad()
def evaluate_reusing(
    plan: Plan,
    model: Any,
    processor: Any,
    batches: list[dict[str, torch.Tensor]],
    unsteered_texts: Sequence[str],
    max_new_tokens: int,
) -> tuple[dict[str, Any], torch.Tensor]:
    """One prompt set under a decision-position MARS plan, without generating the unsteered answers again.

    The same numbers as `evaluate_plan` (checked by `--smoke`), from the package's own parts:
    decision logits from one unsteered prefix (or a forward per batch where the model keeps rope
    state), and answers generated only for rows whose gate can open (`rows_plan_can_change`); every
    other row repeats its unsteered answer bit for bit, so the cached one is used.  Returns the set
    summary and the rows' unsteered decision states at the plan's layer (for the gate section).
    """
    step = mars_step(plan)
    assert step is not None, "evaluate_reusing takes MARS plans"
    layer, token_ids = step.layers[0], refusal_token_ids(processor)
    if prefix_supported(model):
        prefix = DecisionPrefix(model, batches)
        base = prefix.run(None, record_layers=[layer])
        base_logits, states, steered = base.logits, base.states[layer], prefix.logits(plan)
    else:
        base_logits = torch.cat([decision_logits(model, batch) for batch in batches])
        with plan.apply(model):
            steered = torch.cat([decision_logits(model, batch) for batch in batches])
        states = decision_states(model, batches, layer)
    texts: list[str] = []
    offset = 0
    for batch in batches:
        count = int(batch["input_ids"].shape[0])
        reuse = list(unsteered_texts[offset:offset + count])
        modality = plan_row_modalities(model, plan, batch["input_ids"])
        rows = rows_plan_can_change(plan, {layer: states[offset:offset + count]}, modality, DEFAULT_MARGIN)
        generation_prefix = (
            GenerationPrefix(model, batch) if bool(rows.any()) and prefix_supported(model) else None
        )
        texts += generate_rows(model, processor, batch, rows, reuse, max_new_tokens, plan, generation_prefix)
        offset += count
    kl = float(first_token_kl(base_logits, steered.to(base_logits.device)).mean())
    scores = first_token_refusal_score(steered, token_ids).tolist()
    return set_summary([is_refusal(t) for t in texts], texts, kl, scores), states.cpu()
