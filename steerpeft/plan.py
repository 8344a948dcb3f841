"""A fitted steering plan: what to add where, and the hooks that apply it.

A `Plan` is a list of `SteeringStep`s plus provenance.  `plan.apply(model)`
installs one forward hook per touched decoder layer (and the embedding, for
ablation there) and returns a handle that is also a context manager: leaving
the `with` block, also through an exception or KeyboardInterrupt, removes every
hook.  Plans save as `plan.json` + `plan.safetensors` and load without running
any code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steerpeft.activations import check_direction
from steerpeft.architectures import ModelLayout, decoder_layers, get_module, unwrap_model
from steerpeft.errors import AdapterError, ConfigError, ShapeError
from steerpeft.formats import PLAN_FORMAT, is_plan_format
from steerpeft.forward_context import ForwardContext
from steerpeft.interventions import INTERVENTIONS, Intervention
from steerpeft.io import atomic_folder, read_json, read_tensors, write_json, write_tensors
from steerpeft.positions import Positions, parse_positions
from steerpeft.provenance import fitting_layout
from steerpeft.recording import layer_output
from steerpeft.scalers import SCALERS, Scaler
from steerpeft.session import acquire_session, active_session, release_session

STEP_SITES = ("output", "writers")
"""Where a step acts: a decoder layer's output, or the outputs of the modules that write the
residual stream inside it (attention and MLP output projections; the post-norms on Gemma-style
models).  Ablating at the writers of every layer (plus the embedding) keeps the direction out of
the residual stream everywhere, mid-layer included: exactly a rank-1 weight edit (Arditi et al.)."""

EMBEDDING = -1
"""Key of a step's direction applied at the token-embedding output (before layer 0)."""



@dataclass
class SteeringStep:
    """One intervention with its directions, strength and positions.

    `directions[layer]` is the raw float32 direction steered at that layer's
    output (`EMBEDDING` for the embedding output).  The same direction may be
    repeated over many layers (ablation everywhere).
    """

    directions: dict[int, torch.Tensor]
    intervention: Intervention
    scaler: Scaler
    positions: Positions
    name: str = "step"
    site: str = "output"
    _cache: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False
    )

    def __post_init__(self) -> None:
        self.positions = parse_positions(self.positions)
        if self.site not in STEP_SITES:
            raise ConfigError(f"step {self.name!r}: site must be one of {STEP_SITES}, got {self.site!r}.")
        if not self.directions:
            raise ShapeError(f"step {self.name!r} has no directions: give at least one layer.")

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    def tensors(self, layer: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw, unit) on `like`'s device and dtype, converted once per apply and cached.

        The unit vector is normalised in float32 before the cast, whatever the
        direction's own dtype (float64, bfloat16) or device.  Layers that steer the
        same direction (ablation everywhere) share one pair of tensors, so per-direction
        caches downstream (the ablation projector) are built once.  Under `device_map`
        each device gets its own copy.
        """
        key = (layer, like.device, like.dtype)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._shared_tensors(layer, like) or self._new_tensors(layer, like)
            self._cache[key] = cached
        return cached

    def _shared_tensors(self, layer: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        direction = self.directions[layer]
        for (other, device, dtype), pair in self._cache.items():
            if device == like.device and dtype == like.dtype:
                candidate = self.directions[other]
                if candidate is direction or (candidate.shape == direction.shape and torch.equal(
                        torch.as_tensor(candidate).cpu(), torch.as_tensor(direction).cpu())):
                    return pair
        return None

    def _new_tensors(self, layer: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = torch.as_tensor(self.directions[layer]).detach().float()
        unit = raw / raw.norm()
        return raw.to(like.device, like.dtype), unit.to(like.device, like.dtype)

    def release(self) -> None:
        """Drop the converted tensors (and the intervention's caches): frees accelerator memory."""
        self._cache.clear()
        self.intervention.release()

    def steer(self, hidden: torch.Tensor, layer: int, fc: ForwardContext) -> torch.Tensor:
        """`hidden` with this step applied at the chosen positions of `layer`.

        When the positions cover the whole chunk (a cached decoding step of `generate`), the
        strength stays as the scaler gives it: two kernels per hook for ablation, one for a
        constant addition.  Otherwise the position mask is folded into the strength
        ([batch, seq, 1], 0 outside the positions), so unchosen positions get `h + 0 * x`,
        which is `h` exactly, with no full-size `where`.  Tensors are converted on the first
        forward even when it steers nothing (a prefill under `generated`), so compiled decoding
        steps never find a conversion cache empty (a recompile).
        """
        raw, unit = self.tensors(layer, hidden)
        self.scaler.prepare(layer, hidden)
        if self.positions.covers_chunk(fc):
            strength = self.scaler.strength(hidden, layer, fc)
            shift = self.scaler.shift(hidden, layer, fc)
            base = hidden if shift is None else hidden - shift
            return self.intervention.apply(base, raw, unit, strength, layer)
        if fc.mask_for(self.positions) is None:
            return hidden  # nothing chosen in this chunk (a decoding step of a prompt-only spec)
        strength = self.scaler.strength(hidden, layer, fc)
        weight = fc.weight_for(self.positions, hidden.dtype)
        if isinstance(strength, float):
            strength = fc.weight_for(self.positions, hidden.dtype, strength)  # shared by every hooked layer
        else:
            strength = weight * strength
        shift = self.scaler.shift(hidden, layer, fc)
        base = hidden if shift is None else hidden - weight * shift
        return self.intervention.apply(base, raw, unit, strength, layer)

    def check_against(self, layout: ModelLayout) -> None:
        """Refuse directions that do not fit `layout`; run at apply time, so edits since the last apply
        count."""
        self.release()
        for layer, vector in self.directions.items():
            if layer != EMBEDDING:
                layout.layer_path(layer)
            check_direction(vector, layout.hidden_size, f"step {self.name!r}, layer {layer}")

    def to_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layers": self.layers,
            "positions": self.positions.to_config(),
            "site": self.site,
            "intervention": self.intervention.to_config(),
            "scaler": self.scaler.to_config(),
        }

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        tensors = {f"{prefix}.direction.{layer}": v.float().cpu() for layer, v in self.directions.items()}
        tensors.update({f"{prefix}.scaler.{k}": v for k, v in self.scaler.state_dict().items()})
        return tensors


class SteeringHandle:
    """Active steering on one model; a context manager that removes its hooks on exit."""

    def __init__(self, plan: Plan, model: nn.Module) -> None:
        self.plan = plan
        self.model = unwrap_model(model)
        self.layout = plan.layout_for(self.model)
        self._handles: list[Any] = []
        self._active = False
        self._install()

    def _install(self) -> None:
        layout = self.layout
        acquire_session(self.model, layout.image_token_id, layout.video_token_id,
                        self.plan.model_info.get("video_frame_token_id"))
        self._active = True
        try:
            modules = decoder_layers(self.model, layout)
            for layer in self.plan.touched_layers():
                module = (
                    get_module(self.model, layout.embedding_path) if layer == EMBEDDING else modules[layer]
                )
                output_steps = [
                    s for s in self.plan.steps
                    if layer in s.directions and (s.site == "output" or layer == EMBEDDING)
                ]
                observers = [s for s in self.plan.steps if layer in s.scaler.observed_layers()]
                if output_steps or observers:
                    self._handles.append(
                        module.register_forward_hook(self._hook(layer, output_steps, observers))
                    )
                writer_steps = [
                    s for s in self.plan.steps
                    if layer in s.directions and s.site == "writers" and layer != EMBEDDING
                ]
                if writer_steps:
                    for path in residual_output_paths(layout, layer):
                        writer = get_module(self.model, path)
                        self._handles.append(
                            writer.register_forward_hook(self._hook(layer, writer_steps, []))
                        )
        except BaseException:
            self.remove()
            raise

    def _hook(self, layer: int, steps: list[SteeringStep], observers: list[SteeringStep]) -> Any:
        model = self.model

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            session = active_session(model)
            fc = session.context if session is not None else None
            if fc is None:
                return None
            hidden = layer_output(output)
            fc = fc.on(hidden.device)
            for step in observers:
                step.scaler.observe(layer, hidden, fc)
            for step in steps:
                hidden = step.steer(hidden, layer, fc)
            if isinstance(output, tuple):
                return (hidden, *output[1:])
            return hidden

        return hook

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._active:
            self._active = False
            release_session(self.model)
            for step in self.plan.steps:
                step.release()

    def __enter__(self) -> SteeringHandle:  # noqa: PYI034 (final class)
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@dataclass
class Plan:
    """Fitted steering: steps in the order they apply, plus where they came from.

    `model_info` records the base model (id, hidden size, layer count, layout
    paths) so applying to a different model fails clearly.  `metadata` holds
    the recipe, scores and anything a report or model card shows.
    """

    steps: list[SteeringStep]
    model_info: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def touched_layers(self) -> list[int]:
        layers: set[int] = set()
        for step in self.steps:
            layers.update(step.directions)
            layers.update(step.scaler.observed_layers())
        return sorted(layers)

    def layout_for(self, model: nn.Module, *, force: bool = False) -> ModelLayout:
        """The model's layout, checked against the plan's recorded base model."""
        layout = fitting_layout(model, self.model_info, "plan", force=force)
        for step in self.steps:
            step.check_against(layout)
        return layout

    def apply(self, model: nn.Module) -> SteeringHandle:
        """Start steering `model`; use as `with plan.apply(model): ...`."""
        return SteeringHandle(self, model)

    # -- persistence -----------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write `plan.json` and `plan.safetensors` atomically into folder `path`."""
        tensors: dict[str, torch.Tensor] = {}
        for index, step in enumerate(self.steps):
            tensors.update(step.state_dict(f"steps.{index}"))
        config = {
            "format": PLAN_FORMAT,
            "model": self.model_info,
            "steps": [step.to_config() for step in self.steps],
            "metadata": self.metadata,
        }
        with atomic_folder(path) as staging:
            write_tensors(staging / "plan.safetensors", tensors, {"format": PLAN_FORMAT})
            write_json(staging / "plan.json", config)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        """Read a saved plan: JSON and safetensors only, components by registered name."""
        folder = Path(path)
        config = read_json(folder / "plan.json")
        if not isinstance(config, dict) or not is_plan_format(config.get("format")):
            raise AdapterError(
                f"{folder / 'plan.json'} is not a steerpeft plan (format {PLAN_FORMAT!r} expected)."
            )
        tensors = read_tensors(folder / "plan.safetensors")
        steps = [_load_step(index, spec, tensors) for index, spec in enumerate(config.get("steps", []))]
        if not steps:
            raise AdapterError(f"{folder} holds a plan with no steps.")
        return cls(steps, dict(config.get("model", {})), dict(config.get("metadata", {})))


def residual_output_paths(layout: ModelLayout, layer: int) -> list[str]:
    """Modules whose outputs are added to the residual stream inside decoder layer `layer`."""
    if layout.post_norm:
        base = layout.layer_path(layer)
        return [f"{base}.post_attention_layernorm", f"{base}.post_feedforward_layernorm"]
    return layout.residual_writer_paths(layer)


def build_step_parts(index: int, spec: Any, where: str = "plan") -> tuple[Intervention, Scaler, Positions]:
    """The intervention, scaler and positions a saved step names, built and checked without tensors.

    Saved plans and adapters name registered components only: an import path, an unknown name or
    option, a bad position spec or site fails here, with the step named, before anything touches a
    model.  Nothing is imported or executed.
    """
    label = f"{where} step {index}"
    if not isinstance(spec, dict):
        raise AdapterError(f"{label} is not a mapping: the file is corrupt.")
    try:
        layers = [int(layer) for layer in spec["layers"]]
        intervention = INTERVENTIONS.build(spec["intervention"]["name"], spec["intervention"].get("params"))
        scaler = SCALERS.build(spec["scaler"]["name"], spec["scaler"].get("params"))
        positions = parse_positions(spec["positions"])
    except KeyError as exc:
        raise AdapterError(f"{label} is incomplete: missing {exc}. The file is corrupt.") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise AdapterError(f"{label} is malformed ({exc}). The file is corrupt.") from exc
    except ConfigError as exc:
        raise ConfigError(f"{label} ({spec.get('name', 'step')!r}): {exc}") from exc
    if not layers:
        raise AdapterError(f"{label} lists no layers: the file is corrupt.")
    site = spec.get("site", "output")
    if site not in STEP_SITES:
        raise ConfigError(
            f"{label} ({spec.get('name', 'step')!r}): site must be one of {STEP_SITES}, got {site!r}."
        )
    return intervention, scaler, positions


def check_plan_config(config: Any, where: str = "plan") -> None:
    """Refuse a saved plan config (plan.json, or a STEER adapter's `plan`) whose steps do not build."""
    steps = config.get("steps") if isinstance(config, dict) else None
    if not isinstance(steps, list) or not steps:
        raise AdapterError(f"The {where} holds no steps: the file is corrupt.")
    for index, spec in enumerate(steps):
        build_step_parts(index, spec, where)


def _load_step(index: int, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> SteeringStep:
    intervention, scaler, positions = build_step_parts(index, spec)
    prefix = f"steps.{index}"
    try:
        directions = {int(layer): tensors[f"{prefix}.direction.{layer}"] for layer in spec["layers"]}
    except KeyError as exc:
        raise AdapterError(
            f"plan step {index} is incomplete: missing {exc}. The plan file is corrupt."
        ) from exc
    scaler_prefix = f"{prefix}.scaler."
    scaler.load_state_dict(
        {k[len(scaler_prefix):]: v for k, v in tensors.items() if k.startswith(scaler_prefix)}
    )
    return SteeringStep(
        directions, intervention, scaler, positions, spec.get("name", "step"), spec.get("site", "output")
    )
