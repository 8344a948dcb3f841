"""Neutral-media statistics shared by the MARS selector and scaler (MARS.md steps 3-5).

Harmless prompts are recorded once text-only and once per media modality with
neutral (solid random colour) images or videos.  The difference of means is
the modality offset delta^m_l; the re-centred gate values t of the neutral-
media prompts calibrate tau (calibration split) and measure the false-trigger
rate (validation split).  With `media.segment: modality` the training harmful
prompts are recorded with neutral media too, so each modality's segment gets its
own length along u (its span), instead of the text span.  Results are memoised
in `FitData.extra`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from steerpeft.activations import Activations
from steerpeft.errors import ConfigError
from steerpeft.fitting import FitData
from steerpeft.positions import DecisionPosition
from steerpeft.scalers.trust_region import LayerRegion

MODALITY_INDEX = {"text": 0, "image": 1, "video": 2}
SEGMENTS = ("text", "modality")
"""`text`: every modality's segment has the text span (MARS.md as written: harmless data only).
`modality`: the harmful end is measured per modality too (same harmful text prompts + neutral media)."""
MIN_SPAN_FRACTION = 0.1
"""A measured span is kept at >= this fraction of the text span, so a modality where the direction
barely separates cannot blow t up."""
_CACHE_KEY = "mars_neutral_statistics"


@dataclass
class NeutralStatistics:
    """Modality offsets per layer ([3, hidden]) and held-out harmless states per modality.

    `held_out[modality][layer]` is [prompts, hidden]: decision-position states of the
    validation harmless prompts (with neutral media for image/video).  Even rows form
    the *calibration* half (tau), odd rows the *check* half (false-trigger rate), so tau
    is never measured on the prompts that defined the direction or on those it is judged by.
    """

    offsets: dict[int, torch.Tensor]
    held_out: dict[str, dict[int, torch.Tensor]]
    media_modalities: list[str] = field(default_factory=list)
    spans: dict[int, torch.Tensor] = field(default_factory=dict)  # [3] per layer, only with segment "modality"

    def gate_values(self, region: LayerRegion, layer: int, split: str = "calibration", recenter: bool = True,
                    modalities: list[str] | None = None) -> torch.Tensor:
        """t of the harmless prompts of `split` ("calibration", "check" or "all"), pooled over modalities."""
        values = []
        for modality in modalities or list(self.held_out):
            states = self.held_out[modality][layer]
            if split == "calibration" and len(states) > 1:
                states = states[0::2]
            elif split == "check" and len(states) > 1:
                states = states[1::2]
            values.append(gate_values_of(states, region, MODALITY_INDEX[modality] if recenter else 0))
        return torch.cat(values) if values else torch.empty(0)

    def tau(self, region: LayerRegion, layer: int, quantile: float) -> float:
        """The `quantile` of calibration-half t values, floored at 0 (MARS.md step 4)."""
        values = self.gate_values(region, layer, "calibration")
        return max(0.0, float(torch.quantile(values.double(), quantile)))


def gate_value(projection: torch.Tensor, region: LayerRegion, modality: int = 0) -> torch.Tensor:
    """t of re-centred projections of one modality (0 text, 1 image, 2 video)."""
    return (projection - region.p_minus) / region.span_table()[modality]


def gate_values_of(states: torch.Tensor, region: LayerRegion, modality: int) -> torch.Tensor:
    """t of decision states [n, hidden] carrying `modality` (0 = text, or no re-centering)."""
    if modality:
        states = states - region.offsets[modality]
    return gate_value(states @ region.unit, region, modality)


def layer_region(data: FitData, stats: NeutralStatistics, layer: int) -> LayerRegion:
    p_plus, p_minus = data.directions.projections(layer)
    raw = data.directions.vectors[layer].float()
    spans = stats.spans.get(layer)
    return LayerRegion(data.directions.unit(layer), p_plus, p_minus, float(raw.norm()), stats.offsets[layer].clone(),
                       None if spans is None else spans.clone())


def _spans(data: FitData, harmful: dict[str, Activations], offsets: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Per layer: [text span, image span, video span] along u, floored at MIN_SPAN_FRACTION of the text span."""
    spans = {}
    for layer in data.negative.layers:
        unit = data.directions.unit(layer).float()
        p_plus, p_minus = data.directions.projections(layer)
        text_span = p_plus - p_minus
        row = torch.full((3,), text_span, dtype=torch.float32)
        for modality, recorded in harmful.items():
            index = MODALITY_INDEX[modality]
            measured = float((recorded.mean(layer).float() - offsets[layer][index]) @ unit) - p_minus
            row[index] = max(measured, MIN_SPAN_FRACTION * text_span)
        spans[layer] = row
    return spans


def neutral_statistics(data: FitData) -> NeutralStatistics:
    """Record harmless prompts with neutral media (once per fit) and derive offsets."""
    cached = data.extra.get(_CACHE_KEY)
    if cached is not None:
        return cached
    from steerpeft.mars.inputs import available_modalities, modality_batches
    from steerpeft.steerer import model_device

    options: dict[str, Any] = dict(data.extra.get("media") or {})
    layers = data.negative.layers
    hidden = data.layout.hidden_size
    media = [m for m in available_modalities(data.model, data.tokenizer) if m != "text"]
    wanted = options.get("modalities")
    if wanted:
        media = [m for m in media if m in wanted]
    held_out_text = data.negative_validation or data.negative
    held_out: dict[str, dict[int, torch.Tensor]] = {"text": {layer: held_out_text.prompts(layer) for layer in layers}}
    offsets = {layer: torch.zeros(3, hidden) for layer in layers}
    steerer, device = data.steerer, model_device(data.model)
    seed, frames = int(options.get("seed") or 0), int(options.get("video_frames") or 4)
    segment = options.get("segment") or "text"
    if segment not in SEGMENTS:
        from steerpeft.registry import suggest

        raise ConfigError(f"media.segment must be one of {', '.join(SEGMENTS)}, got {segment!r}.{suggest(str(segment), list(SEGMENTS))}")
    train_prompts = list(data.prompts["negative"].prompts)
    harmful_prompts = list(data.prompts["positive"].prompts)
    harmful: dict[str, Activations] = {}
    held_out_set = data.prompts.get("negative_validation") or data.prompts["negative"]
    for modality in media:
        recorded: dict[str, Activations] = {}
        for split, prompts, offset in (("train", train_prompts, 0), ("held_out", list(held_out_set.prompts), 1000)):
            batches = modality_batches(data.tokenizer, prompts, modality, batch_size=steerer.batch_size,
                                       seed=seed + offset, video_frames=frames, device=device)
            recorded[split] = steerer.record(data.model, data.layout, batches, len(prompts), layers,
                                             f"harmless_{modality}_{split}", positions=DecisionPosition())
        held_out[modality] = {layer: recorded["held_out"].prompts(layer) for layer in layers}
        for layer in layers:
            offsets[layer][MODALITY_INDEX[modality]] = recorded["train"].mean(layer) - data.negative.mean(layer)
        if segment == "modality":
            batches = modality_batches(data.tokenizer, harmful_prompts, modality, batch_size=steerer.batch_size,
                                       seed=seed + 2000, video_frames=frames, device=device)
            harmful[modality] = steerer.record(data.model, data.layout, batches, len(harmful_prompts), layers,
                                               f"harmful_{modality}_train", positions=DecisionPosition())
    spans = _spans(data, harmful, offsets) if segment == "modality" else {}
    stats = NeutralStatistics(offsets, held_out, media, spans)
    data.extra[_CACHE_KEY] = stats
    return stats
