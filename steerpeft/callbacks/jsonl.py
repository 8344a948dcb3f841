"""A JSONL metrics log: one line per fit event (and per failure), for later analysis.

The evaluation's numbers go to `metrics.json`; this log follows the fit as it happens."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerpeft.callbacks.base import CALLBACKS, Callback, Runner


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

    def on_fit_start(self, runner: Runner, model: Any) -> None:
        self._write("fit_start", step=runner.name)

    def on_record_end(self, runner: Runner, split: str, activations: Any) -> None:
        self._write(
            "recorded", step=runner.name, split=split, prompts=activations.num_prompts,
            positions=activations.count,
        )

    def on_layer_scored(self, runner: Runner, layer: int, scores: dict[str, Any]) -> None:
        self._write("layer_scored", step=runner.name, layer=layer, scores=scores)

    def on_layer_selected(self, runner: Runner, selection: Any) -> None:
        self._write("layer_selected", step=runner.name, layers=selection.layers)

    def on_scaler_calibrated(self, runner: Runner, scaler: Any) -> None:
        self._write("scaler_calibrated", step=runner.name, scaler=scaler.describe())

    def on_fit_end(self, runner: Runner, plan: Any) -> None:
        self._write("fit_end", step=runner.name)

    def on_exception(self, runner: Runner, stage: str, error: BaseException) -> None:
        self._write("failed", step=runner.name, stage=stage, error=f"{type(error).__name__}: {error}")
