"""`SteerLayer`: the storage child a STEER adapter adds to each host layer (tensors only, no compute)."""

from __future__ import annotations

import warnings
from typing import Any, Protocol

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from steerpeft.errors import AdapterError
from steerpeft.formats import TENSORS_ATTR


class AdapterRuntime(Protocol):
    """What a `SteerLayer` asks of the runtime that owns an adapter's hooks (`SteerRuntime`)."""

    def sync(self) -> None: ...

    def close(self) -> None: ...


class _TensorBank(nn.Module):
    """One adapter's tensors at one host, as buffers."""


class SteerLayer(nn.Module, BaseTunerLayer):
    """Storage child of a decoder layer (or the embedding): the plan tensors hosted there.

    It computes nothing: the hooks belong to the adapter's `SteerRuntime`.  As a PEFT tuner
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
        self._runtimes: dict[str, AdapterRuntime] = {}

    @property
    def weight(self) -> torch.Tensor:  # BaseTunerLayer.weight would recurse: there is no base layer
        raise AttributeError("a STEER storage layer has no weight")

    @property
    def bias(self) -> torch.Tensor:
        raise AttributeError("a STEER storage layer has no bias")

    def add_tensor(self, adapter_name: str, name: str, shape: list[int]) -> None:
        bank = (
            self.steerpeft_tensors[adapter_name] if adapter_name in self.steerpeft_tensors else _TensorBank()
        )
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
            "into weights. Use unload() to remove it, or export the plan with kind='lora' if it is "
            "expressible as a weight delta."
        )

    def unmerge(self) -> None:
        return None

    def _move_adapter_to_device_of_base_layer(
        self, adapter_name: str, device: torch.device | None = None
    ) -> None:
        return None  # buffers follow the host module; hooks move tensors to the hidden states' device

    def _sync(self) -> None:
        for runtime in list(self._runtimes.values()):
            runtime.sync()
