"""Callbacks: observe the lifecycle of a fit, an evaluation and a whole run without touching the loops.

Every hook receives the runner that calls it first (a `Steerer` during a fit, the evaluation or
the run job afterwards; see `Runner`), then keyword arguments.  Hooks are called in this order:

Fit (`Steerer.fit`, once per recipe step):

1. `on_fit_start(runner, model)`
2. for each recorded split ("positive", "negative", "positive_validation", ...):
   `on_record_start(runner, split, total)`, `on_batch_end(runner, split, rows)` per batch,
   `on_record_end(runner, split, activations)`
3. `on_directions_computed(runner, directions)`
4. `on_layer_scored(runner, layer, scores)` per candidate layer (sweeps only)
5. `on_layer_selected(runner, selection)`
6. `on_scaler_calibrated(runner, scaler)`
7. `on_fit_end(runner, plan)`

Evaluation (`steerpeft.evaluation.evaluate`):

1. `on_evaluate_start(runner, conditions, total)` (total: batches over every condition and set)
2. per condition: `on_condition_start(runner, condition, total)`, `on_eval_batch_end(runner,
   condition, set_name, rows)` per batch, `on_condition_end(runner, condition)`
3. `on_evaluate_end(runner, report)`

Run (`steerpeft run`): `on_run_start(runner, out_dir)`, then the fit and evaluation hooks, then
`on_run_end(runner, run)`: the adapter export and the report are callbacks on this hook
(`steerpeft.run.stages`), in the order they are listed.

Around `Steerer.apply`: `on_apply_start(runner, plan, model)` / `on_apply_end(runner, plan, model)`.

Whenever a stage fails (any exception, Ctrl-C included), `on_exception(runner, stage, error)`
is called before the error propagates: progress bars close, logs record the failure.

Every hook is a documented no-op; override the ones you need.  Callbacks type the runner with the
`Runner` protocol, so nothing here imports the classes that drive them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from steerpeft.registry import Registry

if TYPE_CHECKING:
    from steerpeft.activations import Activations, Directions
    from steerpeft.plan import Plan
    from steerpeft.scalers import Scaler
    from steerpeft.selectors import Selection


class Runner(Protocol):
    """Whoever calls the hooks: a `Steerer`, an evaluation or a run; `name` labels its events."""

    name: str


class Callback:
    """Base class with a no-op method per lifecycle event."""

    # -- fit ---------------------------------------------------------------
    def on_fit_start(self, runner: Runner, model: Any) -> None:
        """A fit begins on `model`."""

    def on_record_start(self, runner: Runner, split: str, total: int) -> None:
        """Recording of `total` prompts of `split` begins."""

    def on_batch_end(self, runner: Runner, split: str, rows: int) -> None:
        """A recorded batch of `rows` prompts is done."""

    def on_record_end(self, runner: Runner, split: str, activations: Activations) -> None:
        """`split` is recorded."""

    def on_directions_computed(self, runner: Runner, directions: Directions) -> None:
        """The extractor gave a direction per candidate layer."""

    def on_layer_scored(self, runner: Runner, layer: int, scores: dict[str, Any]) -> None:
        """A selector scored one candidate layer."""

    def on_layer_selected(self, runner: Runner, selection: Selection) -> None:
        """The selector chose its layer(s)."""

    def on_scaler_calibrated(self, runner: Runner, scaler: Scaler) -> None:
        """The scaler learned its thresholds or statistics."""

    def on_fit_end(self, runner: Runner, plan: Plan) -> None:
        """The fit produced `plan`."""

    # -- apply --------------------------------------------------------------
    def on_apply_start(self, runner: Runner, plan: Plan, model: Any) -> None:
        """`Steerer.apply` starts steering `model` with `plan`."""

    def on_apply_end(self, runner: Runner, plan: Plan, model: Any) -> None:
        """`Steerer.apply` stopped steering."""

    # -- evaluation -----------------------------------------------------------
    def on_evaluate_start(self, runner: Runner, conditions: list[str], total: int) -> None:
        """An evaluation of `conditions` over `total` batches (all conditions) begins."""

    def on_condition_start(self, runner: Runner, condition: str, total: int) -> None:
        """Condition `condition` begins: `total` batches over every prompt set."""

    def on_eval_batch_end(self, runner: Runner, condition: str, set_name: str, rows: int) -> None:
        """A batch of `rows` prompts of `set_name` is scored under `condition`."""

    def on_condition_end(self, runner: Runner, condition: str) -> None:
        """Condition `condition` is scored on every set."""

    def on_evaluate_end(self, runner: Runner, report: Any) -> None:
        """The evaluation produced `report` (an `EvalReport`)."""

    # -- run ----------------------------------------------------------------
    def on_run_start(self, runner: Runner, out_dir: Any) -> None:
        """A run writing into `out_dir` begins."""

    def on_run_end(self, runner: Runner, run: Any) -> None:
        """The run's fit and evaluation are done: `run` holds the plan, report and metrics so far."""

    # -- failures ---------------------------------------------------------------
    def on_exception(self, runner: Runner, stage: str, error: BaseException) -> None:
        """Stage `stage` ("fit", "evaluate", "run", ...) is failing with `error`; it propagates afterwards."""


CALLBACKS: Registry[Callback] = Registry("callback", base=Callback)


def call_hook(callbacks: Sequence[Callback], runner: Runner, hook: str, **kwargs: Any) -> None:
    """Call `hook` on every callback, in order: the one place lifecycle events are dispatched."""
    for callback in callbacks:
        getattr(callback, hook)(runner, **kwargs)


@contextlib.contextmanager
def stage(callbacks: Sequence[Callback], runner: Runner, name: str) -> Iterator[None]:
    """Run a stage; on any failure tell every callback (`on_exception`), then let the error go on."""
    try:
        yield
    except BaseException as error:
        for callback in callbacks:
            with contextlib.suppress(Exception):  # a failing callback must not hide the real error
                callback.on_exception(runner, name, error)
        raise
