"""Registering STEER with PEFT the moment PEFT is imported, without importing PEFT ourselves.

`import steerpeft` must not pay PEFT's import time, yet every later PEFT or transformers call must
see the STEER method.  So `install()` registers at once when PEFT is already imported, and otherwise
puts a one-shot finder on `sys.meta_path` that registers right after `import peft` finishes.
`require_steer()` is what code that needs STEER calls: it imports (and so registers) the method.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

from steerpeft.errors import AdapterError

_STEER_MODULE = "steerpeft.adapters.steer"


def require_steer() -> ModuleType:
    """The STEER method module, registered with PEFT; AdapterError when STEER is unavailable."""
    try:
        module = importlib.import_module(_STEER_MODULE)
    except Exception as exc:
        raise AdapterError(f"STEER adapters are unavailable with the installed PEFT: {exc}") from exc
    if module.REGISTRATION_ERROR is not None:
        raise module.REGISTRATION_ERROR
    return module


def _register_steer() -> None:
    """Import the STEER module, which registers itself; warn instead of raising (this may run inside
    `import peft`)."""
    try:
        importlib.import_module(_STEER_MODULE)
    except Exception as exc:  # noqa: BLE001  (never break the user's `import peft`)
        warnings.warn(
            f"steerpeft could not register its STEER PEFT method: {exc}", RuntimeWarning, stacklevel=2
        )


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `callback` once, right after module `name` has been imported."""

    def __init__(self, name: str, callback: Callable[[], None]) -> None:
        self.name = name
        self.callback = callback
        self._searching = False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name or self._searching:
            return None
        self._searching = True
        try:
            spec = importlib.util.find_spec(fullname)  # the other finders: this one returns None meanwhile
        finally:
            self._searching = False
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _CallbackLoader(spec.loader, self)
        return spec

    def fire(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        self.callback()


class _CallbackLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, hook: _AfterImport) -> None:
        self._loader = loader
        self._hook = hook

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self._loader  # the module keeps its real loader (resources, reloads)
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        self._hook.fire()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def install() -> None:
    """Register STEER now if PEFT is imported, else right after it is (idempotent)."""
    if "peft" in sys.modules:
        _register_steer()
    elif not any(isinstance(f, _AfterImport) and f.name == "peft" for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport("peft", _register_steer))
