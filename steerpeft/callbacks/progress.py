"""Progress bars for recording and layer sweeps (tqdm), written as a callback."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from steerpeft.callbacks.base import CALLBACKS, Callback


@CALLBACKS.register("progress")
@dataclass
class ProgressBar(Callback):
    """One bar per recorded split (prompts done / total) and one per layer sweep."""

    disable: bool | None = None
    _bars: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def _bar(self, key: str, total: int | None, desc: str) -> Any:
        bar = tqdm(total=total, desc=desc, unit="prompt" if key != "sweep" else "layer", leave=False,
                   disable=self.disable, file=sys.stderr, dynamic_ncols=True)
        self._bars[key] = bar
        return bar

    def on_record_start(self, steerer: Any, split: str, total: int) -> None:
        self._bar(split, total, f"recording {split}")

    def on_batch_end(self, steerer: Any, split: str, rows: int) -> None:
        if split in self._bars:
            self._bars[split].update(rows)

    def on_record_end(self, steerer: Any, split: str, activations: Any) -> None:
        bar = self._bars.pop(split, None)
        if bar is not None:
            bar.close()

    def on_layer_scored(self, steerer: Any, layer: int, scores: dict[str, Any]) -> None:
        bar = self._bars.get("sweep")
        if bar is None:
            bar = self._bar("sweep", None, "scoring layers")
        bar.update(1)
        bar.set_postfix({k: round(v, 3) for k, v in scores.items() if isinstance(v, float)}, refresh=False)

    def on_layer_selected(self, steerer: Any, selection: Any) -> None:
        bar = self._bars.pop("sweep", None)
        if bar is not None:
            bar.close()
