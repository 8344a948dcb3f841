"""The trust region's statistics: per-layer regions and neutral-media statistics (MARS.md steps 2-5).

A `LayerRegion` is what the trust-region scaler needs at one layer: the unit direction, the
centroids' projections, the modality offsets delta^m and (optionally) per-modality spans.

Harmless prompts are recorded once text-only and once per media modality with neutral (solid
random colour) images or videos.  The difference of means is the modality offset delta^m_l; the
re-centred gate values t of all held-out harmless prompts (text and neutral media) calibrate tau,
and the false-trigger rate is measured on the same prompts by leaving each one out of the tau it is
judged against (so every held-out prompt serves both, and no prompt judges a tau it helped set).  With
`media.segment: modality` the training harmful prompts are recorded with neutral media too, so each modality's
segment gets its own length along u (its span), instead of the text span.  Results are memoised in
`FitData.cache`, so the selector and the scaler share one recording.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from steerpeft.activations import Activations
from steerpeft.fitting import FitData
from steerpeft.inputs.batches import available_modalities, modality_batches
from steerpeft.inputs.modality import Modality
from steerpeft.inputs.text import model_device
from steerpeft.mars.settings import media_options
from steerpeft.positions import DecisionPosition

MODALITY_INDEX = {m.label: int(m) for m in Modality}
"""Row of the per-modality tables for each modality label."""
MIN_SPAN_FRACTION = 0.1
"""A measured span is kept at >= this fraction of the text span, so a modality where the direction
barely separates cannot blow t up."""
_CACHE_KEY = "mars_neutral_statistics"


@dataclass
class LayerRegion:
    """Per-layer statistics of the trust region (float32)."""

    unit: torch.Tensor
    p_plus: float
    p_minus: float
    raw_norm: float
    offsets: torch.Tensor  # [3, hidden], rows in `Modality` order (text row: zeros)
    # [3]: harmless->harmful length along u per modality; None = p+ - p- for all
    spans: torch.Tensor | None = None
    target: float = 1.0  # where the traversal ends, in t units (1: the harmful centroid, MARS.md)

    def span_table(self) -> torch.Tensor:
        """Per-modality span [3] (float32): measured, or the text span for every modality."""
        if self.spans is not None:
            return self.spans.float()
        return torch.full((len(Modality),), self.p_plus - self.p_minus, dtype=torch.float32)


@dataclass
class NeutralStatistics:
    """Modality offsets per layer ([3, hidden]) and held-out harmless states per modality.

    `held_out[modality][layer]` is [prompts, hidden]: decision-position states of the
    validation harmless prompts (with neutral media for image/video).  They set tau together, and
    each is judged for a false trigger against the tau of the others (`false_triggers`), so tau is
    never measured on the prompts that defined the direction, nor a prompt on a tau it helped set.
    """

    offsets: dict[int, torch.Tensor]
    held_out: dict[str, dict[int, torch.Tensor]]
    media_modalities: list[str] = field(default_factory=list)
    # [3] per layer, only with segment "modality"
    spans: dict[int, torch.Tensor] = field(default_factory=dict)

    def gate_values(self, region: LayerRegion, layer: int, split: str = "all", recenter: bool = True,
                    modalities: list[str] | None = None) -> torch.Tensor:
        """t of the harmless prompts of `split` ("calibration", "check" or "all"), pooled over modalities."""
        values = []
        for modality in modalities or list(self.held_out):
            states = self.held_out[modality][layer]
            if split == "calibration" and len(states) > 1:
                states = states[0::2]
            elif split == "check" and len(states) > 1:
                states = states[1::2]
            row = Modality.named(modality) if recenter else Modality.TEXT
            values.append(gate_values_of(states, region, row))
        return torch.cat(values) if values else torch.empty(0)

    def tau(self, region: LayerRegion, layer: int, quantile: float) -> float:
        """The `quantile` of the held-out harmless t values, floored at 0 (MARS.md step 4)."""
        return quantile_tau(self.gate_values(region, layer, "all"), quantile)

    def false_triggers(self, region: LayerRegion, layer: int, quantile: float) -> tuple[int, int]:
        """(triggers, prompts): held-out harmless prompts whose t passes the tau set by all the others."""
        values = self.gate_values(region, layer, "all").double()
        if len(values) < 2:
            return 0, len(values)
        others = [torch.cat([values[:i], values[i + 1:]]) for i in range(len(values))]
        return (sum(int(values[i] > quantile_tau(rest, quantile)) for i, rest in enumerate(others)),
                len(values))


def quantile_tau(values: torch.Tensor, quantile: float) -> float:
    """tau from harmless t values: their `quantile`, floored at 0."""
    return max(0.0, float(torch.quantile(values.double(), quantile))) if len(values) else 0.0


def gate_value(projection: torch.Tensor, region: LayerRegion, modality: int = Modality.TEXT) -> torch.Tensor:
    """t of re-centred projections of one modality."""
    return (projection - region.p_minus) / region.span_table()[modality]


def gate_values_of(states: torch.Tensor, region: LayerRegion, modality: int) -> torch.Tensor:
    """t of decision states [n, hidden] carrying `modality` (`Modality.TEXT` = no re-centering)."""
    if modality:
        states = states - region.offsets[modality]
    return gate_value(states @ region.unit, region, modality)


def layer_region(data: FitData, stats: NeutralStatistics, layer: int) -> LayerRegion:
    p_plus, p_minus = data.directions.projections(layer)
    raw = data.directions.vectors[layer].float()
    spans = stats.spans.get(layer)
    return LayerRegion(
        data.directions.unit(layer), p_plus, p_minus, float(raw.norm()), stats.offsets[layer].clone(),
        None if spans is None else spans.clone(),
    )


def _spans(
    data: FitData, harmful: dict[str, Activations], offsets: dict[int, torch.Tensor]
) -> dict[int, torch.Tensor]:
    """Per layer: [text span, image span, video span] along u, floored at MIN_SPAN_FRACTION of the text
    span."""
    spans = {}
    for layer in data.negative.layers:
        unit = data.directions.unit(layer).float()
        p_plus, p_minus = data.directions.projections(layer)
        text_span = p_plus - p_minus
        row = torch.full((len(Modality),), text_span, dtype=torch.float32)
        for modality, recorded in harmful.items():
            index = Modality.named(modality)
            measured = float((recorded.mean(layer).float() - offsets[layer][index]) @ unit) - p_minus
            row[index] = max(measured, MIN_SPAN_FRACTION * text_span)
        spans[layer] = row
    return spans


def neutral_statistics(data: FitData) -> NeutralStatistics:
    """Record harmless prompts with neutral media (once per fit) and derive offsets."""
    cached = data.cache.get(_CACHE_KEY)
    if cached is not None:
        return cached
    options = media_options(data.settings)
    layers = data.negative.layers
    hidden = data.layout.hidden_size
    media = [m for m in available_modalities(data.model, data.tokenizer) if m != Modality.TEXT.label]
    if options.modalities:
        media = [m for m in media if m in options.modalities]
    held_out_text = data.negative_validation or data.negative
    held_out: dict[str, dict[int, torch.Tensor]] = {
        "text": {layer: held_out_text.prompts(layer) for layer in layers}
    }
    offsets = {layer: torch.zeros(len(Modality), hidden) for layer in layers}
    services, device = data.services, model_device(data.model)
    train_prompts = list(data.prompts["negative"].prompts)
    harmful_prompts = list(data.prompts["positive"].prompts)
    harmful: dict[str, Activations] = {}
    held_out_set = data.prompts.get("negative_validation") or data.prompts["negative"]

    def record(prompts: list[str], modality: str, seed: int, split: str) -> Activations:
        batches = modality_batches(data.tokenizer, prompts, modality, batch_size=services.batch_size,
                                   seed=options.seed + seed, video_frames=options.video_frames, device=device)
        return services.record(batches, len(prompts), layers, split, DecisionPosition())

    for modality in media:
        train = record(train_prompts, modality, 0, f"harmless_{modality}_train")
        held = record(list(held_out_set.prompts), modality, 1000, f"harmless_{modality}_held_out")
        held_out[modality] = {layer: held.prompts(layer) for layer in layers}
        for layer in layers:
            offsets[layer][Modality.named(modality)] = train.mean(layer) - data.negative.mean(layer)
        if options.segment == "modality":
            harmful[modality] = record(harmful_prompts, modality, 2000, f"harmful_{modality}_train")
    spans = _spans(data, harmful, offsets) if options.segment == "modality" else {}
    stats = NeutralStatistics(offsets, held_out, media, spans)
    data.cache[_CACHE_KEY] = stats
    return stats
