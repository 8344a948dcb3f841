"""Old import paths that stay readable for one release after a module moved.

An alias module holds only `__getattr__ = moved(__name__, "new.module")`: the new module is
imported on first attribute access (never at import time, so aliases add no import edges), and
a `DeprecationWarning` names the new path.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def moved(old: str, new: str, names: tuple[str, ...] | None = None) -> Callable[[str], Any]:
    """A module-level `__getattr__` that forwards the names of `old` (all, or only `names`) to module
    `new`."""

    def forward(name: str) -> Any:
        if name.startswith("__") or (names is not None and name not in names):
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(
            f"{old} moved to {new}; import {name} from there (the old path goes in the next release).",
            DeprecationWarning, stacklevel=2,
        )
        return getattr(importlib.import_module(new), name)

    return forward
