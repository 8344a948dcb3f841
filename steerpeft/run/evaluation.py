"""What a run evaluates: which prompts, on which inputs, under which conditions, plus the gate values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from steerpeft.architectures import resolve_layout
from steerpeft.callbacks import Callback, ProgressBar, Runner
from steerpeft.data import load_prompts
from steerpeft.evaluation import EvalReport, evaluate
from steerpeft.evaluation.decision_prefix import prefix_supported
from steerpeft.inputs.batches import available_modalities
from steerpeft.inputs.modality import Modality
from steerpeft.mars.evaluation import conditions, decision_states, eval_sets, mars_step
from steerpeft.mars.evaluation_reuse import evaluate_mars
from steerpeft.mars.settings import MediaOptions
from steerpeft.plan import Plan
from steerpeft.positions import DecisionPosition
from steerpeft.provenance import model_id
from steerpeft.recipes import EvalOptions, Recipe
from steerpeft.report.metrics import gate_summary, step_tau


def eval_batch_size(recipe: Recipe) -> int:
    """`eval.batch_size`, falling back to `fit.batch_size`."""
    options: EvalOptions = recipe.section("eval")
    return options.batch_size if options.batch_size is not None else recipe.section("fit").batch_size


def eval_prompts(recipe: Recipe) -> tuple[list[str], list[str], str]:
    """(harmful, harmless, where they come from) for the evaluation, per the recipe's `eval.prompts`.

    - "test" (default): the split held out from the whole fit (`fit.test_fraction`), recomputed
      exactly with `Recipe.split_prompts`; no fit decision saw these prompts.  When the recipe holds
      out no test split, the validation split, and the source says the numbers are optimistic;
    - "validation": the split that chose the layer and calibrated the scaler;
    - "train" / "all": the training split / every prompt of the recipe's data;
    - a mapping `{positive: SOURCE, negative: SOURCE, limit: N}`: prompt files or built-in
      sets read with `steerpeft.data.load_prompts`.
    """
    choice = recipe.section("eval").prompts
    if isinstance(choice, Mapping):
        kwargs = {"limit": choice.get("limit"), "column": choice.get("column")}
        positive, negative = (
            load_prompts(choice["positive"], **kwargs), load_prompts(choice["negative"], **kwargs),
        )
        return list(positive), list(negative), f"{choice['positive']} vs {choice['negative']}"
    splits = recipe.split_prompts(0)
    if choice == "test" and splits["positive_test"] and splits["negative_test"]:
        return (splits["positive_test"], splits["negative_test"],
                ("the test split, held out from the whole fit (no decision saw these prompts: not the "
                "direction, not the layer, not the threshold)"))
    if choice in ("test", "validation"):
        if splits["positive_validation"] and splits["negative_validation"]:
            caveat = (
                " The recipe holds out no test split (fit.test_fraction), so these numbers are optimistic."
                if choice == "test"
                else ""
            )
            return (splits["positive_validation"], splits["negative_validation"],
                    ("the validation split (the prompts that chose the layer and calibrated the threshold; "
                    f"the direction never saw them).{caveat}"))
        return (
            splits["positive"], splits["negative"],
            "the training prompts (the recipe makes no held-out split)",
        )
    if choice == "train":
        return splits["positive"], splits["negative"], "the training prompts of the fit"
    return ([*splits["positive"], *splits["positive_validation"], *splits["positive_test"]],
            [*splits["negative"], *splits["negative_validation"], *splits["negative_test"]],
            "every prompt of the recipe's data")


def model_section(model: Any, modalities: Sequence[str]) -> dict[str, Any]:
    """Provenance of the evaluated model for metrics.json."""
    layout = resolve_layout(model)
    parameter = next(model.parameters())
    return {"id": model_id(model), "type": layout.family, "num_layers": layout.num_layers,
            "hidden_size": layout.hidden_size, "dtype": str(parameter.dtype).removeprefix("torch."),
            "device": str(parameter.device), "modalities": list(modalities)}


def media_sets(
    model: Any, processor: Any, harmful: Sequence[str], harmless: Sequence[str], *, batch_size: int,
    media: MediaOptions | None = None,
) -> tuple[dict[str, list[Any]], list[str]]:
    """(prompt sets per modality the model takes, those modalities): text, and neutral image / video."""
    media = media or MediaOptions()
    modalities = available_modalities(model, processor)
    sets = eval_sets(model, processor, harmful, harmless, modalities=modalities, batch_size=batch_size,
                     seed=media.seed, video_frames=media.video_frames)
    return sets, modalities


def evaluate_plan(
    plan: Plan, model: Any, processor: Any, harmful: Sequence[str], harmless: Sequence[str], *, name: str,
    options: EvalOptions, batch_size: int, media: MediaOptions | None = None, progress: bool = True,
    callbacks: Sequence[Callback] | None = None, runner: Runner | None = None,
) -> tuple[EvalReport, dict[str, Any] | None, list[str], dict[str, Any] | None]:
    """Evaluate `plan` (and its ablations) on every modality the model takes; gate values for MARS plans.

    A MARS plan that steers the decision position only is evaluated with `evaluate_mars` (unless
    `eval.reuse` is off, or the model's positions cannot be prefilled): the same report, but rows
    whose gate stays closed reuse the unsteered answers, which they would repeat bit for bit.
    Returns (report, gate section or None, modalities, what was reused or None).
    """
    sets, modalities = media_sets(model, processor, harmful, harmless, batch_size=batch_size, media=media)
    step = mars_step(plan)
    callbacks = [ProgressBar(disable=None if progress else True)] if callbacks is None else list(callbacks)
    reuse: dict[str, Any] | None = None
    if options.reuse and step is not None and prefix_supported(model) and \
            all(isinstance(s.positions, DecisionPosition) for s in plan.steps):
        stats: dict[str, Any] = {}
        report = evaluate_mars(model, processor, sets, plan, name=name, ablations=options.ablations,
                               generate=options.generate, max_new_tokens=options.max_new_tokens, stats=stats,
                               callbacks=callbacks, runner=runner)
        reuse = {"rows": stats["rows"], "generated": stats["generated"]}
    else:
        stats = {}
        report = evaluate(
            model, processor, sets, conditions(plan, model, name=name, ablations=options.ablations),
            generate=options.generate, max_new_tokens=options.max_new_tokens, callbacks=callbacks,
            runner=runner,
        )
    gate = None
    if step is not None and step_tau(step) is not None:
        tau = float(step_tau(step))  # type: ignore[arg-type]
        layer = step.layers[0]
        gate = {"layer": layer, "tau": tau, "sets": {}}
        for set_name, batches in sets.items():
            modality = Modality.named(set_name.split("/", 1)[1])
            recorded = (stats.get("states") or {}).get(set_name, {}).get(layer)
            if recorded is None:  # no shared prefix: record the decision states once
                recorded = decision_states(model, batches, layer)
            recentered = step.scaler.gate_of_states(layer, recorded, torch.tensor(int(modality)))
            raw = step.scaler.gate_of_states(layer, recorded, None) if modality is not Modality.TEXT else None
            gate["sets"][set_name] = {"recentered": gate_summary(recentered, tau),
                                      "raw": None if raw is None else gate_summary(raw, tau)}
    return report, gate, modalities, reuse
