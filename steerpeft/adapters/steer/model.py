"""`SteerModel`: the PEFT tuner of STEER adapters (injection, switching, unloading, state dicts)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from steerpeft.adapters.steer.config import SteerConfig
from steerpeft.adapters.steer.layer import SteerLayer
from steerpeft.adapters.steer.payload import buffer_name, host_path
from steerpeft.adapters.steer.runtime import SteerRuntime
from steerpeft.architectures import get_module, unwrap_model
from steerpeft.errors import AdapterError
from steerpeft.formats import CHILD_NAME, LEGACY_KEY_PARTS, TENSORS_ATTR, TUNER_PREFIX
from steerpeft.provenance import fitting_layout


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
        self.peft_config = (
            {adapter_name: peft_config} if isinstance(peft_config, PeftConfig) else dict(peft_config)
        )
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
    def inject_adapter(
        self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False, state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        config: SteerConfig = self.peft_config[adapter_name]
        base = unwrap_model(model)
        layout = fitting_layout(base, config.plan.get("model", {}), "adapter")
        slots: dict[str, tuple[SteerLayer, str]] = {}
        for entry in config.tensors:
            host = int(entry["host"])
            path = host_path(layout, host)
            layer = _storage_child(get_module(base, path), host, path)
            if adapter_name in layer._runtimes:
                raise AdapterError(
                    f"A STEER adapter named {adapter_name!r} is already attached to this model (perhaps "
                    "through another PeftModel wrapper). Load further STEER adapters with "
                    "steerpeft.adapters.load_adapter, or pass another adapter_name."
                )
            name = buffer_name(entry["key"])
            layer.add_tensor(adapter_name, name, [int(d) for d in entry["shape"]])
            slots[entry["key"]] = (layer, name)
            if path not in self.targeted_module_names:
                self.targeted_module_names.append(path)
        if not slots:
            raise AdapterError("This STEER adapter lists no tensors: the config is corrupt.")
        runtime = SteerRuntime(base, adapter_name, config, layout, slots)
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
    def _unload_and_optionally_merge(
        self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ) -> nn.Module:
        if merge:
            raise AdapterError(
                "A STEER adapter acts on activations and cannot be merged into weights: call unload() "
                "instead. (Plans made only of constant additions or embedding ablation export as mergeable "
                "LoRA with export_adapter(..., kind='lora').)"
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
    def _get_adapter_state_dict(
        cls, model: nn.Module, config: Any, adapter_name: str, state_dict: dict[str, torch.Tensor],
        unwanted_adapter_names: list[str],
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for _, module in model.named_modules():
            if isinstance(module, SteerLayer) and adapter_name in module.steerpeft_tensors:
                for name, tensor in module.steerpeft_tensors[adapter_name].named_buffers():
                    key = (f"base_model.model.{module.canonical_path}.{CHILD_NAME}.{TENSORS_ATTR}."
                           f"{adapter_name}.{name}")
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
