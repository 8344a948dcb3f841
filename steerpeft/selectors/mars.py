"""Moved to `steerpeft.mars.selector`; this path stays one release for old imports."""

from steerpeft._moved import moved

__getattr__ = moved(__name__, "steerpeft.mars.selector")
