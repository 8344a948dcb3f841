"""Shared base of every pluggable component: config and tensor state.

A component's constructor arguments are its JSON config; tensors it learns
during fit live in `state` (float32, saved with safetensors).  Nothing in a
saved plan is code, so loading one never imports or executes anything.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch


class Component:
    """Mixin for dataclass components: `registry_name`, config and state round-trip."""

    registry_name: ClassVar[str] = ""

    def to_config(self) -> dict[str, Any]:
        params = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}  # type: ignore[arg-type]
        return {"name": self.registry_name, "params": _jsonable(params)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors learned at fit time (float32, CPU)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no tensors, got {sorted(state)}.")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value
