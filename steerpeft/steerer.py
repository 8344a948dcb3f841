"""The runner: fit (record -> extract -> select -> calibrate) and apply.

`Steerer` owns one steering step's lifecycle, as Lightning's Trainer owns a
training loop: components plug in, callbacks watch.  `fit` returns a `Plan`;
`apply` is a context manager around `plan.apply` that also tells callbacks.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from steerpeft import distributed
from steerpeft.activations import Activations, Directions, check_direction
from steerpeft.architectures import ModelLayout, resolve_layout, unwrap_model
from steerpeft.callbacks import Callback, call_hook, stage
from steerpeft.data import PromptSet
from steerpeft.data.splits import holdout_split
from steerpeft.errors import ConfigError, DataError
from steerpeft.extractors import DiffMeans, Extractor
from steerpeft.fitting import FitData
from steerpeft.inputs.text import (
    as_prompt_list,
    batched,
    check_prompt_lengths,
    context_length,
    encode_prompts,
    model_device,
)
from steerpeft.interventions import AddDirection, Intervention
from steerpeft.plan import EMBEDDING, Plan, SteeringHandle, SteeringStep
from steerpeft.positions import Positions, parse_positions
from steerpeft.provenance import model_info
from steerpeft.recording import ActivationRecorder
from steerpeft.scalers import ConstantScaler, Scaler
from steerpeft.selectors import LayerSelector, SweepSelector


class Steerer:
    """Fits and applies one steering step.

    `apply_layers`: "selected" steers the chosen layer(s) with their own
    directions; "all" steers every layer with the chosen layer's direction
    (Arditi-style ablation).  `embedding=True` also steers the embedding output.
    `fit_positions` are where activations are recorded (the decision position
    by default); `positions` are where the plan steers.
    `accelerator` (an accelerate `Accelerator` or `PartialState`) spreads
    recording over processes: each records its shard of every prompt set and
    all get the combined activations (see `steerpeft.distributed`).
    """

    def __init__(
        self,
        extractor: Extractor | None = None,
        selector: LayerSelector | None = None,
        scaler: Scaler | None = None,
        intervention: Intervention | None = None,
        *,
        positions: Positions | str = "all",
        fit_positions: Positions | str = "decision",
        apply_layers: str | list[int] = "selected",
        embedding: bool = False,
        site: str = "output",
        callbacks: Sequence[Callback] = (),
        batch_size: int = 16,
        validation_fraction: float = 0.25,
        seed: int = 0,
        name: str = "step",
        layers_path: str | None = None,
        embedding_path: str | None = None,
        settings: Mapping[str, Any] | None = None,
        accelerator: Any | None = None,
    ) -> None:
        self.extractor = extractor or DiffMeans()
        self.selector = selector or SweepSelector()
        self.scaler = scaler or ConstantScaler()
        self.intervention = intervention or AddDirection()
        self.positions = parse_positions(positions)
        self.fit_positions = parse_positions(fit_positions)
        if apply_layers not in ("selected", "all") and not (
            isinstance(apply_layers, (list, tuple))
            and all(isinstance(v, int) and not isinstance(v, bool) for v in apply_layers)
        ):
            raise ConfigError(
                f"apply_layers must be 'selected', 'all' or a list of layer indices, got {apply_layers!r}."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}.")
        if not 0.0 <= float(validation_fraction) < 1.0:
            raise ConfigError(
                f"validation_fraction must be in [0, 1), got {validation_fraction!r}; 0 disables the split."
            )
        self.apply_layers = apply_layers
        self.embedding = embedding
        self.site = site
        self.callbacks = list(callbacks)
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.seed = seed
        self.name = name
        self.layers_path, self.embedding_path = layers_path, embedding_path
        self.settings = dict(settings or {})
        self.accelerator = accelerator

    # -- callbacks ---------------------------------------------------------
    def call(self, hook: str, **kwargs: Any) -> None:
        """Tell every callback about `hook` (e.g. "on_layer_scored")."""
        call_hook(self.callbacks, self, hook, **kwargs)

    # -- recording -----------------------------------------------------------
    def record(
        self,
        model: torch.nn.Module,
        layout: ModelLayout,
        batches: Iterable[dict[str, torch.Tensor]],
        total: int,
        layers: list[int],
        split: str,
        positions: Positions | None = None,
        keep_per_prompt: bool = True,
        sharded: bool = False,
    ) -> Activations:
        """Record activations of pre-built batches, reporting progress to callbacks.

        `sharded`: the batches hold only this process's shard of the prompts
        (see `record_prompts`); the shards are combined across processes.
        """
        recorder = ActivationRecorder(
            model, layout, layers, positions or self.fit_positions, keep_per_prompt=keep_per_prompt
        )
        self.call("on_record_start", split=split, total=total)
        gather = sharded and distributed.num_processes(self.accelerator) > 1
        try:
            activations = recorder.record(
                batches, on_batch=lambda rows: self.call("on_batch_end", split=split, rows=rows)
            )
        except BaseException:
            if gather:
                distributed.announce_failure(self.accelerator)
            raise
        if gather:
            activations = distributed.gather_activations(self.accelerator, activations, recorder.layers,
                                                         layout.hidden_size, keep_per_prompt)
        self.call("on_record_end", split=split, activations=activations)
        return activations

    def text_batches(
        self, model: torch.nn.Module, tokenizer: Any, prompts: list[str]
    ) -> Iterator[dict[str, torch.Tensor]]:
        device, limit = model_device(model), context_length(model)
        for chunk in batched(prompts, self.batch_size):
            yield encode_prompts(tokenizer, chunk, max_length=limit, device=device)

    def record_prompts(
        self, model: torch.nn.Module, tokenizer: Any, layout: ModelLayout, prompts: list[str],
        layers: list[int], split: str,
        positions: Positions | None = None,
    ) -> Activations:
        """Record `prompts`; with an accelerator, this process records only its shard."""
        if distributed.num_processes(self.accelerator) > 1:
            prompts = distributed.local_shard(self.accelerator, prompts)
        return self.record(
            model, layout, self.text_batches(model, tokenizer, prompts), len(prompts), layers, split,
            positions, sharded=True,
        )

    # -- fit -------------------------------------------------------------------
    def fit(
        self, model: torch.nn.Module, tokenizer: Any, positive: Sequence[str] | Any,
        negative: Sequence[str] | Any,
    ) -> Plan:
        """Record both prompt sets, extract directions, select layers, calibrate the scaler."""
        with stage(self.callbacks, self, "fit"):
            return self._fit(model, tokenizer, positive, negative)

    def _fit(self, model: torch.nn.Module, tokenizer: Any, positive: Sequence[str] | Any,
             negative: Sequence[str] | Any) -> Plan:
        model = unwrap_model(model)
        positive_prompts = as_prompt_list(positive, "positive")
        negative_prompts = as_prompt_list(negative, "negative")
        layout = resolve_layout(model, self.layers_path, self.embedding_path)
        self.call("on_fit_start", model=model)
        layers = sorted(set(self.selector.candidate_layers(layout.num_layers)) | self._extra_layers(layout))
        pos_train, pos_val = self.split(positive_prompts)
        neg_train, neg_val = self.split(negative_prompts)
        self._check_before_recording(
            model, tokenizer, layout, {"positive": positive_prompts, "negative": negative_prompts},
            {"positive": pos_train, "negative": neg_train},
        )
        with torch.no_grad():
            positive_acts = self.record_prompts(model, tokenizer, layout, pos_train, layers, "positive")
            negative_acts = self.record_prompts(model, tokenizer, layout, neg_train, layers, "negative")
            positive_val = (
                self.record_prompts(model, tokenizer, layout, pos_val, layers, "positive_validation")
                if pos_val else None
            )
            negative_val = (
                self.record_prompts(model, tokenizer, layout, neg_val, layers, "negative_validation")
                if neg_val else None
            )
        directions = self.extractor.fit(positive_acts, negative_acts)
        for layer, vector in directions.vectors.items():
            check_direction(
                vector, layout.hidden_size,
                f"step {self.name!r}: {type(self.extractor).__name__} at layer {layer}",
            )
        self.call("on_directions_computed", directions=directions)
        prompt_sets = {
            name: PromptSet(name, tuple(items))
            for name, items in (
                ("positive", pos_train), ("negative", neg_train), ("positive_validation", pos_val),
                ("negative_validation", neg_val),
            )
            if items
        }
        data = FitData(
            model,
            tokenizer,
            layout,
            positive_acts,
            negative_acts,
            positive_val,
            negative_val,
            directions,
            prompt_sets,
            _BoundServices(self, model, tokenizer, layout, directions),
            settings=dict(self.settings),
            scaler=self.scaler,
        )
        selection = self.selector.select(data)
        self.call("on_layer_selected", selection=selection)
        step = self._step_for(directions, selection.layers, layout, self.intervention)
        p_plus, p_minus = directions.projections(selection.layers[0])
        self.scaler.calibrate(data, selection.layers)
        self.call("on_scaler_calibrated", scaler=self.scaler)
        plan = Plan(
            [step],
            model_info=model_info(model, layout, tokenizer),
            metadata={
                "steps": {
                    self.name: {
                        "selected_layers": selection.layers,
                        "layer_scores": selection.table,
                        "extractor": self.extractor.to_config(),
                        "selector": self.selector.to_config(),
                        "fit_positions": self.fit_positions.to_config(),
                        "prompts": {name: len(s) for name, s in prompt_sets.items()},
                        "centroid_projections": {"positive": p_plus, "negative": p_minus},
                    }
                }
            },
        )
        self.last_fit = data
        self.call("on_fit_end", plan=plan)
        return plan

    def _step_for(self, directions: Directions, layers: list[int], layout: ModelLayout,
                 intervention: Intervention) -> SteeringStep:
        """The step this steerer makes when `layers` are chosen, `intervention` resolved against the first
        one's centroids (the scaler goes in as it stands; `fit` calibrates it afterwards)."""
        vectors = self._step_directions(directions, layers, layout)
        p_plus, p_minus = directions.projections(layers[0])
        for target in vectors:
            intervention.resolve(target, p_plus, p_minus)
        return SteeringStep(vectors, intervention, self.scaler, self.positions, self.name, self.site)

    def _check_before_recording(
        self, model: torch.nn.Module, tokenizer: Any, layout: ModelLayout, prompts: dict[str, list[str]],
        train: dict[str, list[str]],
    ) -> None:
        """Refuse what would otherwise fail only after recording: layers, prompt counts and lengths."""
        if isinstance(self.apply_layers, (list, tuple)):
            for layer in self.apply_layers:
                layout.layer_path(layer)
        needed = getattr(self.extractor, "min_prompts_per_class", 1)
        for name, items in train.items():
            if len(items) < needed:
                held_out = len(prompts[name]) - len(items)
                reason = (f" after holding out {held_out} for validation "
                         f"(validation_fraction={self.validation_fraction}); "
                         "add prompts or lower validation_fraction" if held_out else "; add prompts")
                raise DataError(
                    f"{type(self.extractor).__name__} needs at least {needed} {name} prompts to fit on, got "
                    f"{len(items)}{reason}{'' if needed <= 1 else ', or use the diff_means extractor'}."
                )
        for name, items in prompts.items():
            check_prompt_lengths(tokenizer, items, context_length(model), name)

    def _extra_layers(self, layout: ModelLayout) -> set[int]:
        condition = getattr(self.scaler, "condition_layer", None)
        return {condition} if isinstance(condition, int) else set()

    def split(self, prompts: list[str]) -> tuple[list[str], list[str]]:
        """(train, validation) as `fit` splits them (`steerpeft.data.splits.holdout_split`)."""
        return holdout_split(prompts, self.validation_fraction, self.seed)

    _split = split  # the name used before `split` was public

    def _step_directions(
        self, directions: Any, selected: list[int], layout: ModelLayout
    ) -> dict[int, torch.Tensor]:
        if self.apply_layers == "selected":
            chosen = {layer: directions.vectors[layer] for layer in selected}
        else:
            source = directions.vectors[selected[0]]
            targets = range(layout.num_layers) if self.apply_layers == "all" else self.apply_layers
            chosen = {}
            for layer in targets:
                layout.layer_path(layer)
                chosen[int(layer)] = source
        if self.embedding:
            chosen[EMBEDDING] = directions.vectors[selected[0]]
        return chosen

    # -- apply -------------------------------------------------------------------
    @contextlib.contextmanager
    def apply(self, plan: Plan, model: torch.nn.Module) -> Iterator[SteeringHandle]:
        """`plan.apply(model)` with apply start/end callbacks."""
        self.call("on_apply_start", plan=plan, model=model)
        try:
            with plan.apply(model) as handle:
                yield handle
        finally:
            self.call("on_apply_end", plan=plan, model=model)


class _BoundServices:
    """The `FitServices` a fit hands its components: the steerer's recording and callbacks, bound to one
    model."""

    def __init__(self, steerer: Steerer, model: torch.nn.Module, tokenizer: Any, layout: ModelLayout,
                 directions: Directions) -> None:
        self._steerer, self._model, self._tokenizer, self._layout = steerer, model, tokenizer, layout
        self._directions = directions
        self.batch_size = steerer.batch_size

    def plan_for(self, layer: int) -> Plan:
        """The plan this step makes if `layer` is chosen: its layers, embedding, site, intervention,
        positions, with the scaler as it stands before calibration."""
        intervention = copy.deepcopy(self._steerer.intervention)  # the steerer's own is resolved once chosen
        step = self._steerer._step_for(self._directions, [layer], self._layout, intervention)
        return Plan([step], model_info=model_info(self._model, self._layout, self._tokenizer))

    def record(self, batches: Iterable[dict[str, torch.Tensor]], total: int, layers: list[int], split: str,
               positions: Positions | None = None) -> Activations:
        return self._steerer.record(self._model, self._layout, batches, total, layers, split, positions)

    def text_batches(self, prompts: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
        return self._steerer.text_batches(self._model, self._tokenizer, list(prompts))

    def emit(self, hook: str, **kwargs: Any) -> None:
        self._steerer.call(hook, **kwargs)
