"""Exceptions steerpeft raises on bad input.

Every error says what was wrong and how to fix it; the CLI prints the message
without a traceback, so the message must stand on its own.
"""

from __future__ import annotations


class SteerpeftError(Exception):
    """Base class: a user-facing error whose message explains the fix."""


class ConfigError(SteerpeftError, ValueError):
    """A recipe, spec or option is invalid (unknown key, bad value)."""


class ShapeError(SteerpeftError, ValueError):
    """A tensor does not fit the model (hidden size, layer count, dtype)."""


class DataError(SteerpeftError, ValueError):
    """Prompt data is empty, unbalanced or unreadable."""


class ArchitectureError(SteerpeftError, ValueError):
    """The model's decoder layers or embedding could not be located."""


class AdapterError(SteerpeftError, ValueError):
    """An adapter or plan file is corrupt, incomplete or made for another model."""


class SelectionError(SteerpeftError):
    """No candidate layer passed the selector's limits; the message says which limit excluded each one."""


class SteeringWarning(UserWarning):
    """The fit went on but its result needs care (a fallback layer, a model that barely refuses)."""
