"""Moved to `steerpeft.adapters.steer`; this path stays one release for old imports."""

from steerpeft._moved import moved

__getattr__ = moved(__name__, "steerpeft.adapters.steer")
