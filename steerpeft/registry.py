"""Name -> class registries, so recipes can name components.

Each component family (extractors, selectors, scalers, interventions,
callbacks, positions) has one `Registry`.  Users add their own classes with
the `register` decorator; a recipe the user wrote may also name a class by
`package.module:Class` path.  Files that travel with adapters never go through
the import path (see `allow_import`), so loading a downloaded adapter cannot
run code.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from steerpeft.errors import ConfigError

T = TypeVar("T")


def suggest(name: str, choices: list[str]) -> str:
    """A ' Did you mean X?' hint for a misspelt name, or ''."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


class Registry(Generic[T]):
    """Maps a short name to a component class of one family."""

    def __init__(self, family: str, base: type | None = None) -> None:
        self.family = family
        self.base = base
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: `@EXTRACTORS.register("diff_means")`."""

        def decorate(cls: type[T]) -> type[T]:
            existing = self._classes.get(name)
            if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
                raise ConfigError(f"{self.family} name {name!r} is already taken by {existing.__qualname__}.")
            self._classes[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str, *, allow_import: bool = False) -> type[T]:
        """The class registered as `name`, or imported from `module:Class` if allowed."""
        if name in self._classes:
            return self._classes[name]
        if ":" in name:
            if not allow_import:
                raise ConfigError(
                    f"{self.family} {name!r} is an import path, which is refused here: files loaded from "
                    "disk or the Hub never import code. Import and register the class yourself, then load "
                    "again."
                )
            module_name, _, class_name = name.partition(":")
            try:
                cls = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(f"Cannot import {self.family} class {name!r}: {exc}") from exc
            # Only a subclass of the family's base may be built: never `os:system` or `subprocess:Popen`.
            if self.base is None or not (isinstance(cls, type) and issubclass(cls, self.base)):
                expected = self.base.__name__ if self.base is not None else "a registered class"
                raise ConfigError(
                    f"{self.family} {name!r} is not a subclass of {expected}; an import path must name a "
                    f"steerpeft {self.family} class."
                )
            return cls
        raise ConfigError(
            f"Unknown {self.family} {name!r}.{suggest(name, self.names())} "
            f"Known: {', '.join(self.names())}; or register your own class with "
            f"@{self.family.upper()}S.register('name')."
        )

    def build(self, name: str, params: dict[str, Any] | None = None, *, allow_import: bool = False) -> T:
        """Instantiate `name` with keyword `params`, checking the keys first."""
        cls = self.get(name, allow_import=allow_import)
        params = dict(params or {})
        check_keys(cls, params, f"{self.family} {name!r}")
        return cls(**params)


def check_keys(cls: type, params: dict[str, Any], what: str) -> None:
    """Refuse keyword arguments the class does not take, suggesting the nearest."""
    import inspect

    signature = inspect.signature(cls)
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return
    accepted = [n for n in signature.parameters if n != "self"]
    for key in params:
        if key not in accepted:
            raise ConfigError(
                f"{what} has no option {key!r}.{suggest(key, accepted)} Options: {', '.join(accepted)}."
            )
