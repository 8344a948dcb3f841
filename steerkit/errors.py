"""Exceptions steerkit raises on bad input.

Every error says what was wrong and how to fix it; the CLI prints the message
without a traceback, so the message must stand on its own.
"""

from __future__ import annotations


class SteerkitError(Exception):
    """Base class: a user-facing error whose message explains the fix."""


class ConfigError(SteerkitError, ValueError):
    """A recipe, spec or option is invalid (unknown key, bad value)."""


class ShapeError(SteerkitError, ValueError):
    """A tensor does not fit the model (hidden size, layer count, dtype)."""


class DataError(SteerkitError, ValueError):
    """Prompt data is empty, unbalanced or unreadable."""


class ArchitectureError(SteerkitError, ValueError):
    """The model's decoder layers or embedding could not be located."""


class AdapterError(SteerkitError, ValueError):
    """An adapter or plan file is corrupt, incomplete or made for another model."""
