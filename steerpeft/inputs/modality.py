"""Which kind of input a row carries: text only, an image, or a video.

One enum instead of bare codes: the values index per-modality tables (the trust region's
offsets and spans are `[3, ...]` tensors in this order), and the session marks each row of a
forward pass with one of them.
"""

from __future__ import annotations

import enum

from steerpeft.errors import ConfigError


class Modality(enum.IntEnum):
    """Row modality; the value is the row of per-modality tables."""

    TEXT = 0
    IMAGE = 1
    VIDEO = 2

    @property
    def label(self) -> str:
        """The name used in recipes, set names and reports ("text", "image", "video")."""
        return self.name.lower()

    @classmethod
    def named(cls, label: str | Modality) -> Modality:
        """The modality called `label`; ConfigError naming the valid ones otherwise."""
        if isinstance(label, Modality):
            return label
        try:
            return cls[str(label).upper()]
        except KeyError:
            names = ", ".join(m.label for m in cls)
            raise ConfigError(f"Unknown modality {label!r}: use one of {names}.") from None


MODALITIES: tuple[str, ...] = tuple(m.label for m in Modality)
"""Every modality's label, in table order."""
