"""MARS's recipe section `media`: the neutral media that re-centre images and videos.

Read once from the recipe (validated when it loads) and handed to the calibration as this typed
object, through `FitData.settings["media"]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from steerpeft.errors import ConfigError
from steerpeft.inputs.modality import Modality
from steerpeft.recipes.sections import recipe_section
from steerpeft.registry import suggest

SEGMENTS = ("text", "modality")
"""`text`: every modality's segment has the text span (MARS.md as written: harmless data only).
`modality`: the harmful end is measured per modality too (same harmful text prompts + neutral media)."""


@recipe_section("media")
@dataclass
class MediaOptions:
    """Neutral media for re-centering.

    `seed`: colours of the neutral images and clips; `video_frames`: frames per neutral clip;
    `segment`: see `SEGMENTS`; `modalities`: which media to calibrate (None = every medium the
    model and processor take).
    """

    seed: int = 0
    video_frames: int = 4
    segment: str = "text"
    modalities: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"media.seed must be a whole number, got {self.seed!r}.")
        if (
            isinstance(self.video_frames, bool) or not isinstance(self.video_frames, int)
            or self.video_frames < 1
        ):
            raise ConfigError(f"media.video_frames must be a whole number >= 1, got {self.video_frames!r}.")
        if self.segment not in SEGMENTS:
            raise ConfigError(f"media.segment must be one of {', '.join(SEGMENTS)}, got {self.segment!r}."
                              f"{suggest(str(self.segment), list(SEGMENTS))}")
        if self.modalities is not None:
            if isinstance(self.modalities, str):
                self.modalities = [self.modalities]
            media = [m.label for m in Modality if m is not Modality.TEXT]
            for name in self.modalities:
                if name not in media:
                    raise ConfigError(f"media.modalities: {name!r} is not a "
                                      f"medium.{suggest(str(name), media)} Choose from {', '.join(media)}.")
            self.modalities = list(self.modalities)


def media_options(settings: dict[str, Any] | None) -> MediaOptions:
    """The fit's `media` section, or the defaults when the fit was not made from a recipe."""
    options = (settings or {}).get("media")
    if options is None:
        return MediaOptions()
    if isinstance(options, MediaOptions):
        return options
    return MediaOptions(**{k: v for k, v in dict(options).items() if v is not None})
