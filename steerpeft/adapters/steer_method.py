"""STEER: steerpeft plans as a native PEFT method.

A weight delta cannot express input-dependent strengths (trust_region, conditional), position
restrictions (decision, first_generated, prompt, generated), ablation on post-norm models or
re-centering offsets.  STEER carries the plan itself: `adapter_config.json` holds the plan's JSON
config and a manifest of its tensors, `adapter_model.safetensors` the tensors.

How it sits in PEFT 0.21 (checked against its sources):

- PEFT's method list is closed (`register_peft_method` only accepts names already in the
  `PeftType` enum), so `register()` adds a `PeftType.STEER` member and fills the mapping tables
  itself.  It is idempotent and refuses PEFT versions outside `PEFT_RANGE`.  It runs when this
  module is imported, which `steerpeft.adapters` arranges for the moment PEFT is imported.
- The enum *value* written to `adapter_config.json` is `STEER_PEFT_TYPE`, a sentence that names
  steerpeft: PEFT reads `peft_type` and indexes its config table before any code of ours can run,
  so without steerpeft the only message a user sees is `KeyError: '<value>'`.  Making the value
  say "pip install steerpeft, then import steerpeft" is the one place that message can be shaped.
- Nothing is replaced.  Each decoder layer (or the embedding) that stores plan tensors gets a
  child `SteerLayer` named `steerpeft` holding them as buffers in `steerpeft_tensors[adapter]`; the
  steering itself is steerpeft's own `SteeringHandle` (forward hooks on the layers plus the
  session pre-hook), built from those buffers.  A LoRA loaded later still finds every module at
  its usual path.  `disable_adapter()`, `unload()` and `delete_adapter()` remove every hook.
- Tensor keys use the tuner prefix `steerpeft_` on the adapter-keyed container only
  (`...layers.3.steerpeft.steerpeft_tensors.steps__0__direction__3`): transformers' loader appends
  the adapter name after the segment that starts with the prefix, so exactly one segment may.
- Wrapping another `PeftModel` (a user's LoRA) is supported: the STEER tuner is then the outer
  model, `disable_adapter()` reaches the inner LoRA layers too, and `unload()` hands back the inner
  model.  Keys are written relative to the transformers model, so a STEER adapter saved from a
  stacked model loads on a plain one.
"""

from __future__ import annotations

import enum
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from steerpeft.architectures import ModelLayout, get_module, unwrap_model
from steerpeft.errors import AdapterError
from steerpeft.formats import (
    CHILD_NAME,
    LEGACY_KEY_PARTS,
    LEGACY_STEER_PEFT_TYPES,
    PLAN_FORMAT,
    STEER_PEFT_TYPE,
    TENSORS_ATTR,
    TUNER_PREFIX,
    is_plan_format,
)
from steerpeft.plan import EMBEDDING, Plan, SteeringHandle, _load_step
from steerpeft.session import acquire_session, release_session

__all__ = [
    "CHILD_NAME",
    "PEFT_RANGE",
    "REGISTRATION_ERROR",
    "STEER_PEFT_TYPE",
    "TENSORS_ATTR",
    "TUNER_PREFIX",
    "SteerConfig",
    "SteerLayer",
    "SteerModel",
    "check_peft_version",
    "register",
    "steer_payload",
]

PEFT_RANGE = ("0.21", "0.22")
"""Tested PEFT versions: >= first, < second.  The registration touches PEFT internals."""

_KEY_SEPARATOR = "__"


# --------------------------------------------------------------------------- registration


def check_peft_version() -> str:
    """The installed PEFT version; AdapterError outside the tested range."""
    import peft
    from packaging.version import Version

    version = Version(peft.__version__)
    low, high = (Version(v) for v in PEFT_RANGE)
    if not low <= version < high:
        raise AdapterError(
            f"steerpeft's STEER adapters support peft>={PEFT_RANGE[0]},<{PEFT_RANGE[1]}, but peft {peft.__version__} "
            f"is installed. Install a supported version: pip install 'peft>={PEFT_RANGE[0]},<{PEFT_RANGE[1]}'. "
            "(Plain LoRA exports do not need steerpeft at all.)"
        )
    return peft.__version__


def _add_enum_member(enum_cls: type[enum.Enum], name: str, value: str) -> enum.Enum:
    """Add `name = value` to a str-mixin Enum after its creation (Python 3.10-3.13)."""
    existing = enum_cls.__members__.get(name)
    if existing is not None:
        if existing.value != value:
            raise AdapterError(
                f"{enum_cls.__name__}.{name} already exists with value {existing.value!r}: another package "
                "registered a PEFT method of that name, which steerpeft cannot replace."
            )
        return existing
    if value in enum_cls._value2member_map_:
        raise AdapterError(f"{enum_cls.__name__} already has a member with value {value!r}.")
    member = str.__new__(enum_cls, value)
    member._name_ = name
    member._value_ = value
    member.__objclass__ = enum_cls
    if hasattr(enum_cls, "_sort_order_") or any(hasattr(m, "_sort_order_") for m in enum_cls):
        member._sort_order_ = len(enum_cls._member_names_)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(name)
    type.__setattr__(enum_cls, name, member)  # EnumType.__setattr__ refuses new member names
    return member


def register() -> None:
    """Make STEER a PEFT method (idempotent); AdapterError on an unsupported PEFT version."""
    check_peft_version()
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )
    from peft.utils import PeftType

    members = [_add_enum_member(PeftType, "STEER", STEER_PEFT_TYPE)]
    # Adapters written before the rename carry the old value: it reads as the same method.
    members += [_add_enum_member(PeftType, f"STEER_LEGACY_{i}", value) for i, value in enumerate(LEGACY_STEER_PEFT_TYPES)]
    for member in members:
        for table, value in (
            (PEFT_TYPE_TO_CONFIG_MAPPING, SteerConfig),
            (PEFT_TYPE_TO_TUNER_MAPPING, SteerModel),
            (PEFT_TYPE_TO_PREFIX_MAPPING, TUNER_PREFIX),
        ):
            current = table.get(member)
            if current is not None and current is not value and getattr(current, "__qualname__", current) != getattr(
                value, "__qualname__", value
            ):
                raise AdapterError(f"PEFT's {member.name} entry is already taken by {current!r}.")
            table[member] = value
        PEFT_TYPE_TO_MIXED_MODEL_MAPPING.pop(member, None)  # STEER does not mix inside PeftMixedModel


# --------------------------------------------------------------------------- config


@dataclass
class SteerConfig(PeftConfig):
    """Configuration of a STEER adapter: a steerpeft plan without its tensors, plus a tensor manifest.

    `plan` is `Plan.save`'s JSON (format, model, steps, metadata).  `tensors` lists every plan
    tensor as `{"key": "steps.0.direction.3", "host": 3, "shape": [576]}`: `host` is the decoder
    layer (or -1, the embedding) whose `steerpeft` child stores it.
    """

    plan: dict = field(default_factory=dict, metadata={"help": "steerpeft plan config (Plan.save's plan.json)."})
    tensors: list = field(default_factory=list, metadata={"help": "Manifest of the plan tensors: key, host, shape."})
    steerpeft_version: str | None = field(default=None, metadata={"help": "steerpeft version that wrote the adapter."})
    steerkit_version: str | None = field(default=None, metadata={"help": "Set in adapters written before the "
                                                                          "rename to steerpeft; read only."})

    def __post_init__(self) -> None:
        super().__post_init__()
        from peft.utils import PeftType

        steer = getattr(PeftType, "STEER", None)
        if steer is None:
            raise AdapterError("The STEER PEFT method is not registered: import steerpeft first.")
        self.peft_type = steer
        if not isinstance(self.plan, dict) or not is_plan_format(self.plan.get("format")):
            raise AdapterError(
                f"This STEER adapter config holds no steerpeft plan (format {PLAN_FORMAT!r} expected): the file is "
                "corrupt or was written by an incompatible steerpeft version."
            )
        for entry in self.tensors:
            if not isinstance(entry, dict) or not {"key", "host", "shape"} <= set(entry):
                raise AdapterError(f"STEER tensor manifest entry {entry!r} is malformed: the config is corrupt.")


# --------------------------------------------------------------------------- payload (export side)


def buffer_name(key: str) -> str:
    """Plan tensor key -> buffer name (buffers cannot contain dots)."""
    return key.replace(".", _KEY_SEPARATOR)


def host_path(layout: ModelLayout, host: int) -> str:
    return layout.embedding_path if host == EMBEDDING else layout.layer_path(host)


def canonical_key(layout_paths: dict[str, str], host: int, key: str, parts: tuple[str, str] = (CHILD_NAME, TENSORS_ATTR)) -> str:
    """The checkpoint key of plan tensor `key` stored at `host` (adapter name removed).

    `parts` is the (child name, tensors attribute) pair: today's, or one of `LEGACY_KEY_PARTS`."""
    path = layout_paths["embedding_path"] if host == EMBEDDING else f"{layout_paths['layers_path']}.{host}"
    child, attr = parts
    return f"base_model.model.{path}.{child}.{attr}.{buffer_name(key)}"


def _host_for(key: str, step_layers: list[int], num_layers: int) -> int:
    parts = key.split(".")
    # steps.{i}.direction.{layer} | steps.{i}.scaler.{layer}.{name} | steps.{i}.scaler.{name}
    if parts[2] == "direction":
        return int(parts[3])
    if len(parts) > 4:
        try:
            layer = int(parts[3])
        except ValueError:
            layer = None
        if layer is not None and (layer == EMBEDDING or 0 <= layer < num_layers):
            return layer
    return min(step_layers)


def steer_payload(plan: Plan, layout: ModelLayout) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, torch.Tensor]]:
    """(plan config, tensor manifest, checkpoint tensors) of a STEER adapter for `plan`."""
    model_info = {**plan.model_info, "layers_path": layout.layers_path, "embedding_path": layout.embedding_path,
                  "hidden_size": layout.hidden_size, "num_layers": layout.num_layers}
    spec = {"format": PLAN_FORMAT, "model": model_info, "steps": [s.to_config() for s in plan.steps],
            "metadata": plan.metadata}
    manifest: list[dict[str, Any]] = []
    tensors: dict[str, torch.Tensor] = {}
    names: set[str] = set()
    for index, step in enumerate(plan.steps):
        for key, tensor in step.state_dict(f"steps.{index}").items():
            name = buffer_name(key)
            if name in names:
                raise AdapterError(f"plan tensor {key!r} collides with another once dots become {_KEY_SEPARATOR!r}.")
            names.add(name)
            host = _host_for(key, step.layers, layout.num_layers)
            manifest.append({"key": key, "host": host, "shape": list(tensor.shape)})
            tensors[canonical_key(model_info, host, key)] = tensor.detach().float().cpu().contiguous()
    return spec, manifest, tensors


def build_plan(config: SteerConfig, tensors: dict[str, torch.Tensor]) -> Plan:
    """The steerpeft Plan of a STEER config, with `tensors` keyed by plan key."""
    spec = config.plan
    steps = [_load_step(index, step, tensors) for index, step in enumerate(spec.get("steps", []))]
    if not steps:
        raise AdapterError("This STEER adapter holds a plan with no steps: the config is corrupt.")
    return Plan(steps, dict(spec.get("model", {})), dict(spec.get("metadata", {})))


# --------------------------------------------------------------------------- layer


class _TensorBank(nn.Module):
    """One adapter's tensors at one host, as buffers."""


class SteerLayer(nn.Module, BaseTunerLayer):
    """Storage child of a decoder layer (or the embedding): the plan tensors hosted there.

    It computes nothing: the hooks belong to the adapter's `_SteerRuntime`.  As a PEFT tuner
    layer it receives `enable_adapters`, `set_adapter` and `delete_adapter` calls, also from a
    LoRA tuner it is nested in, and passes them on to the runtimes.
    """

    adapter_layer_names = (TENSORS_ATTR,)

    def __init__(self, host: int, canonical_path: str) -> None:
        super().__init__()
        self.host = host
        self.canonical_path = canonical_path  # path relative to the transformers model
        self.steerpeft_tensors = nn.ModuleDict()
        self._active_adapter: list[str] = []
        self._disable_adapters = False
        self.merged_adapters = []
        self._runtimes: dict[str, _SteerRuntime] = {}

    @property
    def weight(self) -> torch.Tensor:  # BaseTunerLayer.weight would recurse: there is no base layer
        raise AttributeError("a STEER storage layer has no weight")

    @property
    def bias(self) -> torch.Tensor:
        raise AttributeError("a STEER storage layer has no bias")

    def add_tensor(self, adapter_name: str, name: str, shape: list[int]) -> None:
        bank = self.steerpeft_tensors[adapter_name] if adapter_name in self.steerpeft_tensors else _TensorBank()
        bank.register_buffer(name, torch.zeros(shape, dtype=torch.float32))
        self.steerpeft_tensors[adapter_name] = bank

    def tensor(self, adapter_name: str, name: str) -> torch.Tensor:
        return getattr(self.steerpeft_tensors[adapter_name], name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("SteerLayer only stores STEER tensors; it is not called.")

    # PEFT protocol -------------------------------------------------------
    def enable_adapters(self, enabled: bool) -> None:
        super().enable_adapters(enabled)
        self._sync()

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_names, inference_mode=inference_mode)
        self._sync()

    def delete_adapter(self, adapter_name: str) -> None:
        runtime = self._runtimes.pop(adapter_name, None)
        if runtime is not None:
            runtime.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            super().delete_adapter(adapter_name)
        self._sync()

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise AdapterError(
            "A STEER adapter acts on activations (positions, input-dependent strengths) and cannot be merged "
            "into weights. Use unload() to remove it, or export the plan with kind='lora' if it is expressible "
            "as a weight delta."
        )

    def unmerge(self) -> None:
        return None

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        return None  # buffers follow the host module; hooks move tensors to the hidden states' device

    def _sync(self) -> None:
        for runtime in list(self._runtimes.values()):
            runtime.sync()


# --------------------------------------------------------------------------- runtime


class _SteerRuntime:
    """One STEER adapter on one model: owns its SteeringHandle while the adapter is on.

    The plan is rebuilt from the buffers whenever they change (loading writes them after the
    adapter is injected; `.to()` replaces them), detected before each forward from the buffers'
    storage pointers and version counters.
    """

    def __init__(self, model: nn.Module, name: str, config: SteerConfig, layout: ModelLayout,
                 slots: dict[str, tuple[SteerLayer, str]]) -> None:
        self.model = model
        self.name = name
        self.config = config
        self.layout = layout
        self.slots = slots  # plan key -> (host layer, buffer name)
        self.handle: SteeringHandle | None = None
        self._stamp: tuple | None = None
        self._pre_hook: Any = None
        self.on = False

    def layers(self) -> list[SteerLayer]:
        unique: dict[int, SteerLayer] = {}
        for layer, _ in self.slots.values():
            unique[id(layer)] = layer
        return list(unique.values())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {key: layer.tensor(self.name, buffer) for key, (layer, buffer) in self.slots.items()}

    def wanted(self) -> bool:
        layers = self.layers()
        return bool(layers) and all(
            not layer.disable_adapters and self.name in layer.active_adapters
            and self.name in layer.steerpeft_tensors for layer in layers
        )

    def sync(self) -> None:
        wanted = self.wanted()
        if wanted and not self.on:
            acquire_session(self.model, self.layout.image_token_id, self.layout.video_token_id)
            self._pre_hook = self.model.register_forward_pre_hook(self._refresh)
            self.on = True
        elif not wanted and self.on:
            self._stop()

    def _refresh(self, module: nn.Module, args: Any) -> None:
        tensors = self.tensors()
        stamp = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors.values())
        if self.handle is not None and stamp == self._stamp:
            return
        plan = build_plan(self.config, {k: t.detach().clone() for k, t in tensors.items()})
        handle = SteeringHandle(plan, self.model)  # session already held: its pre-hook runs this call
        if self.handle is not None:
            self.handle.remove()
        self.handle, self._stamp = handle, stamp

    def _stop(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if self._pre_hook is not None:
            self._pre_hook.remove()
            self._pre_hook = None
        self._stamp = None
        if self.on:
            self.on = False
            release_session(self.model)

    def close(self) -> None:
        self._stop()
        for layer in self.layers():
            layer._runtimes.pop(self.name, None)


# --------------------------------------------------------------------------- tuner


class SteerModel(BaseTuner):
    """PEFT tuner of STEER adapters (see the module docstring)."""

    prefix: str = TUNER_PREFIX
    tuner_layer_cls = SteerLayer
    target_module_mapping: ClassVar[dict[str, list[str]]] = {}

    def __init__(self, model: nn.Module, peft_config: Any, adapter_name: str, low_cpu_mem_usage: bool = False,
                 state_dict: dict[str, torch.Tensor] | None = None) -> None:
        # BaseTuner.__init__ is not called: it would add this config to, and then overwrite, the
        # `peft_config` of an inner PeftModel that this tuner wraps.
        nn.Module.__init__(self)
        self.model = model
        self.targeted_module_names: list[str] = []
        self.targeted_parameter_names: list[str] = []
        self.peft_config = {adapter_name: peft_config} if isinstance(peft_config, PeftConfig) else dict(peft_config)
        self.active_adapter: str | list[str] = adapter_name
        self._unload_inner = False  # set by steerpeft's loader when it created the inner model itself
        self.inject_adapter(model, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)
        self._owns_model_peft_config = "peft_config" not in model.__dict__ and not _is_peft_wrapper(model)
        if self._owns_model_peft_config:
            model.peft_config = self.peft_config

    def _create_and_replace(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("STEER attaches storage children and hooks; it replaces no module.")

    @staticmethod
    def _check_target_module_exists(peft_config: Any, key: str) -> bool:
        return False

    # -- injection -------------------------------------------------------
    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True,
                       low_cpu_mem_usage: bool = False, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        config: SteerConfig = self.peft_config[adapter_name]
        from steerpeft.adapters.loading import check_model

        base = unwrap_model(model)
        layout = check_model(base, config.plan.get("model", {}))
        slots: dict[str, tuple[SteerLayer, str]] = {}
        for entry in config.tensors:
            host = int(entry["host"])
            path = host_path(layout, host)
            layer = _storage_child(get_module(base, path), host, path)
            if adapter_name in layer._runtimes:
                raise AdapterError(
                    f"A STEER adapter named {adapter_name!r} is already attached to this model (perhaps through "
                    "another PeftModel wrapper). Load further STEER adapters with steerpeft.adapters.load_adapter, "
                    "or pass another adapter_name."
                )
            name = buffer_name(entry["key"])
            layer.add_tensor(adapter_name, name, [int(d) for d in entry["shape"]])
            slots[entry["key"]] = (layer, name)
            if path not in self.targeted_module_names:
                self.targeted_module_names.append(path)
        if not slots:
            raise AdapterError("This STEER adapter lists no tensors: the config is corrupt.")
        runtime = _SteerRuntime(base, adapter_name, config, layout, slots)
        for layer in runtime.layers():
            layer._runtimes[adapter_name] = runtime
        self.set_adapter(self.active_adapters)

    # -- adapter switching ----------------------------------------------------
    def _steer_layers(self) -> list[SteerLayer]:
        return [m for m in self.model.modules() if isinstance(m, SteerLayer)]

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        for name in names:
            if name not in self.peft_config:
                raise ValueError(f"Adapter {name} not found in {list(self.peft_config)}")
        for layer in self._steer_layers():
            layer.set_adapter(names, inference_mode=inference_mode)
        self.active_adapter = names if len(names) != 1 else names[0]

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise ValueError(f"Adapter {adapter_name} does not exist")
        del self.peft_config[adapter_name]
        for layer in self._steer_layers():
            if adapter_name in layer.steerpeft_tensors:
                layer.delete_adapter(adapter_name)
        _remove_empty_children(self.model)
        remaining = [a for a in self.active_adapters if a != adapter_name]
        self.active_adapter = remaining or list(self.peft_config)[:1]

    # -- unloading -------------------------------------------------------------
    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False,
                                     adapter_names: list[str] | None = None) -> nn.Module:
        if merge:
            raise AdapterError(
                "A STEER adapter acts on activations and cannot be merged into weights: call unload() instead. "
                "(Plans made only of constant additions or embedding ablation export as mergeable LoRA with "
                "export_adapter(..., kind='lora').)"
            )
        for layer in self._steer_layers():
            for name in self.peft_config:
                if name in layer.steerpeft_tensors:
                    layer.delete_adapter(name)
        _remove_empty_children(self.model)
        if self._owns_model_peft_config and "peft_config" in self.model.__dict__:
            del self.model.peft_config
        inner = self.model
        if self._unload_inner and _is_peft_wrapper(inner):
            return inner.unload()
        return inner

    # -- state dict ------------------------------------------------------------
    @classmethod
    def _get_adapter_state_dict(cls, model: nn.Module, config: Any, adapter_name: str,
                                state_dict: dict[str, torch.Tensor], unwanted_adapter_names: list[str]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for _, module in model.named_modules():
            if isinstance(module, SteerLayer) and adapter_name in module.steerpeft_tensors:
                for name, tensor in module.steerpeft_tensors[adapter_name].named_buffers():
                    key = f"base_model.model.{module.canonical_path}.{CHILD_NAME}.{TENSORS_ATTR}.{adapter_name}.{name}"
                    out[key] = tensor
        return out

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model: nn.Module, config: Any, adapter_name: str,
                                           state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mapping: dict[str, str] = {}
        for module_name, module in model.named_modules():
            if isinstance(module, SteerLayer) and adapter_name in module.steerpeft_tensors:
                for name, _ in module.steerpeft_tensors[adapter_name].named_buffers():
                    actual = f"{module_name}.{TENSORS_ATTR}.{adapter_name}.{name}"
                    for child, attr in ((CHILD_NAME, TENSORS_ATTR), *LEGACY_KEY_PARTS):
                        checkpoint = f"{module.canonical_path}.{child}.{attr}.{name}"
                        mapping[checkpoint] = actual
                        mapping[f"base_model.model.{checkpoint}"] = actual
        return {mapping.get(key, key): value for key, value in state_dict.items()}


# --------------------------------------------------------------------------- helpers


def _is_peft_wrapper(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, (PeftModel, BaseTuner))


def _storage_child(host: nn.Module, host_id: int, path: str) -> SteerLayer:
    child = host._modules.get(CHILD_NAME)
    if child is None:
        child = SteerLayer(host_id, path)
        host.add_module(CHILD_NAME, child)
    elif not isinstance(child, SteerLayer):
        raise AdapterError(f"{path} already has a submodule named {CHILD_NAME!r} that is not steerpeft's.")
    return child


def _remove_empty_children(model: nn.Module) -> None:
    for module in list(model.modules()):
        child = module._modules.get(CHILD_NAME)
        if isinstance(child, SteerLayer) and len(child.steerpeft_tensors) == 0:
            del module._modules[CHILD_NAME]


REGISTRATION_ERROR: AdapterError | None = None
"""Why STEER could not be registered on import (an untested PEFT version), else None."""

try:
    register()
except AdapterError as _exc:
    REGISTRATION_ERROR = _exc
    warnings.warn(f"steerpeft did not register its STEER PEFT method: {_exc}", RuntimeWarning, stacklevel=2)
