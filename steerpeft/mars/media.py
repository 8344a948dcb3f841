"""Moved to `steerpeft.inputs.media`; this path stays one release for old imports."""

from steerpeft._moved import moved

__getattr__ = moved(__name__, "steerpeft.inputs.media")
