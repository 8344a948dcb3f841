"""Steering as PEFT adapters: export, load, share.

- `export_adapter(plan, model, path, kind="auto"|"lora"|"steer", card=None)` writes a plan as a
  plain LoRA (stock PEFT and transformers load it), a STEER adapter (a native PEFT method that
  steerkit registers), or both;
- `load_adapter(model, path)` loads any of them, also on top of a user's own LoRA;
- `push_to_hub(folder, repo_id)` uploads an exported folder.

Importing this package (`import steerkit` does) registers STEER with PEFT.  On an untested PEFT
version the registration is skipped with a warning, plain LoRA keeps working, and STEER calls
raise the version error (`require_steer`).
"""

from __future__ import annotations

import warnings
from types import ModuleType

from steerkit.errors import AdapterError

_STEER_ERROR: Exception | None = None
_steer_module: ModuleType | None = None

try:
    from steerkit.adapters import steer_method as _steer_method

    _steer_method.register()
    _steer_module = _steer_method
except (AdapterError, ImportError, AttributeError, TypeError) as _exc:  # an untested PEFT version
    _STEER_ERROR = _exc
    warnings.warn(f"steerkit could not register its STEER PEFT method: {_exc}", RuntimeWarning, stacklevel=2)


def require_steer() -> ModuleType:
    """The STEER method module; the registration error when STEER is unavailable."""
    if _steer_module is None:
        if isinstance(_STEER_ERROR, AdapterError):
            raise _STEER_ERROR
        raise AdapterError(f"STEER adapters are unavailable with this PEFT version: {_STEER_ERROR}") from _STEER_ERROR
    return _steer_module


from steerkit.adapters.card import render_card  # noqa: E402
from steerkit.adapters.exporting import export_adapter  # noqa: E402
from steerkit.adapters.hub import UploadRequest, push_to_hub  # noqa: E402
from steerkit.adapters.loading import load_adapter  # noqa: E402

__all__ = ["UploadRequest", "export_adapter", "load_adapter", "push_to_hub", "render_card", "require_steer"]
