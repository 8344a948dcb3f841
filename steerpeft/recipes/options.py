"""The generic recipe sections: which model, which prompts, how to fit, evaluate and write a run.

Each is a dataclass registered as a recipe section (`steerpeft.recipes.sections`): the keys a
recipe may write are its fields, and the values are checked here, once, when the recipe loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from steerpeft.errors import ConfigError
from steerpeft.recipes.sections import recipe_section

EVAL_PROMPT_CHOICES = ("test", "validation", "train", "all")


def _whole(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what} must be a whole number >= {minimum}, got {value!r}.")
    return value


@recipe_section("model")
@dataclass
class ModelOptions:
    """Which model to load (`name`: None = the embedded default) and where its layers are."""

    name: str | None = None
    dtype: str = "float32"
    device: str | None = None
    revision: str | None = None
    layers_path: str | None = None
    embedding_path: str | None = None


@recipe_section("data")
@dataclass
class DataOptions:
    """The fit's prompt sources (files, `builtin:harmful`, `hf:org/name`), a column and a cap."""

    positive: str = "builtin:harmful"
    negative: str = "builtin:harmless"
    column: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.limit is not None:
            _whole(self.limit, "data.limit", 1)


@recipe_section("fit")
@dataclass
class FitOptions:
    """Batch size, how the prompts are split, the seed.

    Three disjoint parts per prompt set: `test_fraction` of the prompts is held out from the whole
    fit (the run reports on it: no decision saw those prompts); of the rest, `validation_fraction`
    selects the layer and calibrates the scaler, and the remainder extracts the direction.
    """

    batch_size: int = 16
    validation_fraction: float = 0.25
    test_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        _whole(self.batch_size, "batch_size", 1)
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if (
                isinstance(value, bool) or not isinstance(value, (int, float))
                or not 0.0 <= float(value) < 1.0
            ):
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}; 0 disables that split.")
            setattr(self, name, float(value))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"fit.seed must be a whole number, got {self.seed!r}.")


@recipe_section("eval")
@dataclass
class EvalOptions:
    """What the run evaluates: greedy answers (`generate`), how long, on which prompts, ablations.

    `prompts`: "test" (the split no fit decision saw; the validation split when the recipe holds
    out none), "validation" (the split that chose the layer and calibrated the scaler), "train", "all", or a
    mapping `{positive: SOURCE, negative: SOURCE, limit: N, column: NAME}` of prompt sources.
    `batch_size`: None = the fit's batch size.  `reuse`: a MARS plan that steers the decision
    position only reuses the unsteered answers of rows whose gate stays closed (identical by
    construction) and prefills each prompt once for every condition; false runs every condition
    in full (slower, the same numbers).
    """

    generate: bool = True
    max_new_tokens: int = 24
    prompts: Any = "test"
    batch_size: int | None = None
    ablations: bool = True
    reuse: bool = True

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int)
            or self.max_new_tokens < 1
        ):
            raise ConfigError(f"eval.max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.batch_size is not None:
            _whole(self.batch_size, "eval.batch_size", 1)
        if isinstance(self.prompts, Mapping):
            unknown = set(self.prompts) - {"positive", "negative", "limit", "column"}
            if unknown or not {"positive", "negative"} <= set(self.prompts):
                raise ConfigError("eval.prompts as a mapping needs 'positive' and 'negative' (and optionally "
                                  f"'limit', 'column'); got keys {sorted(self.prompts)}.")
        elif self.prompts not in EVAL_PROMPT_CHOICES:
            raise ConfigError("eval.prompts must be 'test', 'validation', 'train', 'all' or a mapping of "
                              f"prompt sources, got {self.prompts!r}.")


@recipe_section("output")
@dataclass
class OutputOptions:
    """The run folder (None = runs/<recipe>-<timestamp>), and whether to export and plot."""

    dir: str | None = None
    export: bool = True
    plots: bool = True
