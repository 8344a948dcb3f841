"""Forks and stacks of dynamic KV caches: the prompt prefix is computed once and shared.

Dynamic cache layers never write into their tensors (an update concatenates into new ones),
so a shallow copy is an independent cache that shares memory with its source until it grows.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from steerpeft.errors import ConfigError


def fork_cache(cache: Any, rows: torch.Tensor | None = None) -> Any:
    """A copy of a dynamic KV cache that a forward (or `generate`) may extend without touching `cache`.

    Dynamic cache layers never write into their tensors: an update concatenates into new
    ones, a crop or row selection slices.  So a shallow copy of the cache and of each layer
    is an independent cache that shares the prefix's memory until it grows.  `rows` keeps
    only those batch rows (a copy of them).
    """
    fork = copy.copy(cache)
    fork.layers = [copy.copy(layer) for layer in cache.layers]
    if rows is not None:
        fork.batch_select_indices(rows.to(cache_device(cache)))
    return fork


def cache_device(cache: Any) -> torch.device:
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if isinstance(keys, torch.Tensor):
            return keys.device
    return torch.device("cpu")


def require_dynamic_cache(cache: Any) -> None:
    layers = getattr(cache, "layers", None)
    if layers is None or not all(isinstance(layer, DynamicLayer) for layer in layers):
        raise ConfigError(
            "A decision prefix needs a dynamic KV cache (transformers DynamicCache layers), got "
            f"{type(cache).__name__}; this model's cache is not supported."
        )


def stack_caches(caches: list[Any], widths: list[int]) -> Any:
    """One cache holding every batch's rows, right-aligned to the longest prefix (zeros on the left).

    The zero columns are masked out by the stacked attention mask, so they get no attention
    weight.  Sliding-window layers keep at most window - 1 columns; they are aligned the same
    way and their token count is the longest prefix.
    """
    stacked = fork_cache(caches[0])
    longest = max(widths)
    for index, layer in enumerate(stacked.layers):
        parts = [cache.layers[index] for cache in caches]
        if not all(getattr(part, "is_initialized", False) for part in parts):
            continue
        columns = max(part.keys.shape[-2] for part in parts)

        def aligned(tensor: torch.Tensor, columns: int = columns) -> torch.Tensor:
            missing = columns - tensor.shape[-2]
            if missing == 0:
                return tensor
            pad = tensor.new_zeros(*tensor.shape[:-2], missing, tensor.shape[-1])
            return torch.cat([pad, tensor], dim=-2)

        layer.keys = torch.cat([aligned(part.keys) for part in parts])
        layer.values = torch.cat([aligned(part.values) for part in parts])
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = longest
    return stacked
