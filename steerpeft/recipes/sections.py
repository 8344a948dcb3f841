"""Recipe sections: each top-level mapping of a recipe is a dataclass registered under its key.

The dataclass is the schema: the keys a recipe may write in a section are exactly the fields its
reader gets, and its `__post_init__` checks the values once, when the recipe loads.  The generic
sections live in `steerpeft.recipes.options`; a recipe family adds its own (the MARS wing
registers `media`).  `None` in a recipe means "the default".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from steerpeft.errors import ConfigError
from steerpeft.registry import suggest

T = TypeVar("T")

TOP_LEVEL_KEYS = ("name", "description", "steps")
"""Top-level recipe keys that are not sections."""
STEP_KEYS = ["name", "extractor", "selector", "scaler", "intervention", "positions", "fit_positions",
             "apply_layers", "embedding", "site", "data"]
"""Keys of one entry of `steps`."""

_SECTIONS: dict[str, type] = {}


def recipe_section(key: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: the dataclass read from the recipe's `key` mapping."""

    def register(cls: type[T]) -> type[T]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"recipe section {key!r} must be a dataclass, got {cls.__name__}.")
        existing = _SECTIONS.get(key)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ConfigError(f"recipe section {key!r} is already registered by {existing.__qualname__}.")
        _SECTIONS[key] = cls
        return cls

    return register


def section_names() -> list[str]:
    return list(_SECTIONS)


def section_keys(key: str) -> list[str]:
    """The keys section `key` accepts (its dataclass fields)."""
    return [f.name for f in dataclasses.fields(_SECTIONS[key]) if f.init]


def read_section(config: Mapping[str, Any], key: str, where: str = "recipe") -> Any:
    """Section `key` of `config` as its dataclass, defaults where the recipe says nothing or null."""
    cls = _SECTIONS.get(key)
    if cls is None:
        raise ConfigError(f"No recipe section {key!r} is registered.{suggest(key, section_names())}")
    values = config.get(key) or {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: '{key}' must be a mapping.")
    accepted = section_keys(key)
    for name in values:
        if name not in accepted:
            raise ConfigError(f"{where}: {key}: unknown recipe key {name!r}.{suggest(str(name), accepted)} "
                              f"Valid keys here: {', '.join(accepted)}.")
    try:
        return cls(**{k: v for k, v in values.items() if v is not None})
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from exc


def check_top_level(config: Mapping[str, Any], where: str) -> None:
    """Refuse a top-level key that is neither a section nor one of `TOP_LEVEL_KEYS`."""
    known = [*TOP_LEVEL_KEYS, *section_names()]
    for key in config:
        if key not in known:
            raise ConfigError(f"{where}: unknown recipe key {key!r}.{suggest(str(key), known)} "
                              f"Valid keys here: {', '.join(known)}.")


class _Schema(Mapping[str, Any]):
    """Every recipe key as a nested mapping (sections -> their keys), read live from the registry."""

    def _view(self) -> dict[str, Any]:
        view: dict[str, Any] = {key: None for key in TOP_LEVEL_KEYS}
        view.update({key: dict.fromkeys(section_keys(key)) for key in _SECTIONS})
        return view

    def __getitem__(self, key: str) -> Any:
        return self._view()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._view())

    def __len__(self) -> int:
        return len(self._view())


SCHEMA: Mapping[str, Any] = _Schema()
"""The keys a recipe accepts: `None` for plain values, a mapping of keys for each section."""
