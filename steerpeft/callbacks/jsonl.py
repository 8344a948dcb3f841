"""A JSONL metrics log: one line per lifecycle event, for later analysis."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerpeft.callbacks.base import CALLBACKS, Callback


@CALLBACKS.register("jsonl")
@dataclass
class JsonlLogger(Callback):
    """Appends `{"event": ..., "time": ..., ...}` lines to `path`."""

    path: str = "metrics.jsonl"

    def _write(self, event: str, **fields: Any) -> None:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps({"event": event, "time": time.time(), **fields}, default=str) + "\n")

    def on_fit_start(self, steerer: Any, model: Any) -> None:
        self._write("fit_start", step=steerer.name)

    def on_record_end(self, steerer: Any, split: str, activations: Any) -> None:
        self._write("recorded", step=steerer.name, split=split, prompts=activations.num_prompts, positions=activations.count)

    def on_layer_scored(self, steerer: Any, layer: int, scores: dict[str, Any]) -> None:
        self._write("layer_scored", step=steerer.name, layer=layer, scores=scores)

    def on_layer_selected(self, steerer: Any, selection: Any) -> None:
        self._write("layer_selected", step=steerer.name, layers=selection.layers)

    def on_scaler_calibrated(self, steerer: Any, scaler: Any) -> None:
        self._write("scaler_calibrated", step=steerer.name, scaler=scaler.describe())

    def on_fit_end(self, steerer: Any, plan: Any) -> None:
        self._write("fit_end", step=steerer.name)
