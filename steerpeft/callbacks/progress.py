"""Progress for every long stage (recording, layer sweeps, each evaluation condition), as a callback.

On a terminal each stage gets a tqdm bar with counts.  When stderr is not a terminal (a log file,
CI, a notebook's captured output), bars would print nothing useful, so each stage writes one line
when it ends instead: what it did, how many items, how long it took.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from steerpeft.callbacks.base import CALLBACKS, Callback, Runner


@dataclass
class _Stage:
    bar: Any
    description: str
    unit: str
    started: float
    count: int = 0
    total: int | None = None


@CALLBACKS.register("progress")
@dataclass
class ProgressBar(Callback):
    """One bar per recorded split, per layer sweep and per evaluation condition.

    `disable`: None = bars on a terminal and one summary line per stage otherwise; True = silent.
    """

    disable: bool | None = None
    _stages: dict[str, _Stage] = field(default_factory=dict, init=False, repr=False)

    # -- stages -------------------------------------------------------------------
    def _lines_only(self) -> bool:
        return self.disable is None and not sys.stderr.isatty()

    def _open(self, key: str, total: int | None, description: str, unit: str) -> _Stage:
        self._close(key, interrupted=True)
        bar = tqdm(total=total, desc=description, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True,
                   disable=True if (self.disable or self._lines_only()) else self.disable)
        stage = _Stage(bar, description, unit, time.perf_counter(), total=total)
        self._stages[key] = stage
        return stage

    def _advance(self, key: str, count: int, postfix: dict[str, Any] | None = None) -> None:
        stage = self._stages.get(key)
        if stage is None:
            return
        stage.count += count
        stage.bar.update(count)
        if postfix:
            stage.bar.set_postfix(postfix, refresh=False)

    def _close(self, key: str, interrupted: bool = False) -> None:
        stage = self._stages.pop(key, None)
        if stage is None:
            return
        stage.bar.close()
        if self._lines_only():
            done = f"{stage.count}/{stage.total}" if stage.total is not None else str(stage.count)
            state = "stopped" if interrupted else "done"
            units = stage.unit + ("es" if stage.unit.endswith("ch") else "s")
            print(
                f"{stage.description}: {done} {units} {state} in {time.perf_counter() - stage.started:.1f} s",
                file=sys.stderr, flush=True,
            )

    # -- fit --------------------------------------------------------------------------
    def on_record_start(self, runner: Runner, split: str, total: int) -> None:
        self._open(f"record/{split}", total, f"recording {split}", "prompt")

    def on_batch_end(self, runner: Runner, split: str, rows: int) -> None:
        self._advance(f"record/{split}", rows)

    def on_record_end(self, runner: Runner, split: str, activations: Any) -> None:
        self._close(f"record/{split}")

    def on_layer_scored(self, runner: Runner, layer: int, scores: dict[str, Any]) -> None:
        if "sweep" not in self._stages:
            self._open("sweep", None, "scoring layers", "layer")
        self._advance("sweep", 1, {k: round(v, 3) for k, v in scores.items() if isinstance(v, float)})

    def on_layer_selected(self, runner: Runner, selection: Any) -> None:
        self._close("sweep")

    # -- evaluation ----------------------------------------------------------------------
    def on_condition_start(self, runner: Runner, condition: str, total: int) -> None:
        self._open(f"eval/{condition}", total, f"evaluating {condition}", "batch")

    def on_eval_batch_end(self, runner: Runner, condition: str, set_name: str, rows: int) -> None:
        self._advance(f"eval/{condition}", 1, {"set": set_name})

    def on_condition_end(self, runner: Runner, condition: str) -> None:
        self._close(f"eval/{condition}")

    # -- failures --------------------------------------------------------------------------
    def on_exception(self, runner: Runner, stage: str, error: BaseException) -> None:
        for key in list(self._stages):
            self._close(key, interrupted=True)
