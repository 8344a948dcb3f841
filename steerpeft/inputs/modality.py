"""Which kind of input a row carries: text only, an image, or a video.

One enum instead of bare codes: the values index per-modality tables (the trust region's
offsets and spans are `[3, ...]` tensors in this order), and the session marks each row of a
forward pass with one of them.
"""

from __future__ import annotations

import enum

import torch

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


def row_modalities(input_ids: torch.Tensor | None, image_token_id: int | None, video_token_id: int | None,
                   frame_token_id: int | None = None) -> torch.Tensor | None:
    """Per row of `input_ids` [batch, seq]: `VIDEO` if it holds video tokens, else `IMAGE` if image tokens,
    else `TEXT`.

    None for a model that takes no media.  Models that feed video frames through image tokens
    (SmolVLM2) have no video token; there a row that opens two or more frames (`frame_token_id`,
    recorded from the processor at fit time) is a video, so a prompt with several images counts as
    a video on them.
    """
    if input_ids is None or (image_token_id is None and video_token_id is None):
        return None
    modality = torch.full(
        (input_ids.shape[0],), int(Modality.TEXT), dtype=torch.long, device=input_ids.device
    )
    if image_token_id is not None:
        modality = torch.where((input_ids == image_token_id).any(dim=1), int(Modality.IMAGE), modality)
    if video_token_id is not None:
        modality = torch.where((input_ids == video_token_id).any(dim=1), int(Modality.VIDEO), modality)
    elif frame_token_id is not None:
        modality = torch.where((input_ids == frame_token_id).sum(dim=1) >= 2, int(Modality.VIDEO), modality)
    return modality
