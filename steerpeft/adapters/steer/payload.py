"""What a STEER adapter stores: the plan config, a tensor manifest and checkpoint keys (export and load)."""

from __future__ import annotations

from typing import Any

import torch

from steerpeft.architectures import ModelLayout
from steerpeft.errors import AdapterError
from steerpeft.formats import CHILD_NAME, PLAN_FORMAT, TENSORS_ATTR
from steerpeft.plan import EMBEDDING, Plan, _load_step

_KEY_SEPARATOR = "__"


def buffer_name(key: str) -> str:
    """Plan tensor key -> buffer name (buffers cannot contain dots)."""
    return key.replace(".", _KEY_SEPARATOR)


def host_path(layout: ModelLayout, host: int) -> str:
    return layout.embedding_path if host == EMBEDDING else layout.layer_path(host)


def canonical_key(
    layout_paths: dict[str, str], host: int, key: str, parts: tuple[str, str] = (CHILD_NAME, TENSORS_ATTR)
) -> str:
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


def steer_payload(
    plan: Plan, layout: ModelLayout
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, torch.Tensor]]:
    """(plan config, tensor manifest, checkpoint tensors) of a STEER adapter for `plan`."""
    model_info = {
        **plan.model_info, "layers_path": layout.layers_path, "embedding_path": layout.embedding_path,
        "hidden_size": layout.hidden_size, "num_layers": layout.num_layers,
    }
    spec = {"format": PLAN_FORMAT, "model": model_info, "steps": [s.to_config() for s in plan.steps],
            "metadata": plan.metadata}
    manifest: list[dict[str, Any]] = []
    tensors: dict[str, torch.Tensor] = {}
    names: set[str] = set()
    for index, step in enumerate(plan.steps):
        for key, tensor in step.state_dict(f"steps.{index}").items():
            name = buffer_name(key)
            if name in names:
                raise AdapterError(
                    f"plan tensor {key!r} collides with another once dots become {_KEY_SEPARATOR!r}."
                )
            names.add(name)
            host = _host_for(key, step.layers, layout.num_layers)
            manifest.append({"key": key, "host": host, "shape": list(tensor.shape)})
            tensors[canonical_key(model_info, host, key)] = tensor.detach().float().cpu().contiguous()
    return spec, manifest, tensors


def build_plan(config: Any, tensors: dict[str, torch.Tensor]) -> Plan:
    """The steerpeft Plan of a STEER config, with `tensors` keyed by plan key."""
    spec = config.plan
    steps = [_load_step(index, step, tensors) for index, step in enumerate(spec.get("steps", []))]
    if not steps:
        raise AdapterError("This STEER adapter holds a plan with no steps: the config is corrupt.")
    return Plan(steps, dict(spec.get("model", {})), dict(spec.get("metadata", {})))
