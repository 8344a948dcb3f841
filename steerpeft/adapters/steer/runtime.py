"""`SteerRuntime`: one STEER adapter switched on for one model, as steerpeft's own steering hooks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from steerpeft.adapters.steer.config import SteerConfig
from steerpeft.adapters.steer.layer import SteerLayer
from steerpeft.adapters.steer.payload import build_plan
from steerpeft.architectures import ModelLayout
from steerpeft.plan import SteeringHandle
from steerpeft.session import acquire_session, release_session


class SteerRuntime:
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
