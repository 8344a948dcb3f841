"""Recipes: YAML files that say what to fit and how, read with omegaconf.

A recipe names components by registry name (or, in a recipe you wrote, by
`package.module:Class`), so custom extractors, selectors, scalers and
interventions plug in without code changes.  Its top-level mappings are typed
sections (`steerpeft.recipes.sections`): unknown keys fail early with the
nearest valid name suggested, and every value is checked when the recipe loads.
YAML is parsed with a safe loader: tags such as `!!python/object` are refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from steerpeft.callbacks import Callback
from steerpeft.data import load_prompts
from steerpeft.data.splits import holdout_split
from steerpeft.errors import ConfigError
from steerpeft.extractors import EXTRACTORS
from steerpeft.inputs.text import as_prompt_list
from steerpeft.interventions import INTERVENTIONS
from steerpeft.plan import Plan
from steerpeft.recipes.options import DataOptions, FitOptions, ModelOptions
from steerpeft.recipes.overrides import apply_override
from steerpeft.recipes.sections import STEP_KEYS, check_top_level, read_section, section_names
from steerpeft.registry import Registry, suggest
from steerpeft.scalers import SCALERS
from steerpeft.selectors import SELECTORS
from steerpeft.steerer import Steerer

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


@dataclass
class Recipe:
    """A validated recipe: `config` is a plain dict; `allow_import` is True only for files you wrote."""

    config: dict[str, Any]
    source: str = "<dict>"
    allow_import: bool = False

    @property
    def name(self) -> str:
        return str(self.config.get("name") or Path(self.source).stem)

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.create(self.config))

    def with_overrides(self, overrides: Sequence[str]) -> Recipe:
        """Apply `key.path=value` overrides (as on the CLI); unknown keys are refused.

        Values are parsed as YAML (`fit.seed=1` is an int, `model.name=null` is None,
        `steps.0.selector={name: sweep}` a mapping).  List items are addressed by index:
        `steps.0.selector.limits.kl=0.2` or `steps[0].selector.limits.kl=0.2`.
        """
        if not overrides:
            return self
        config = OmegaConf.create(self.config)
        for item in overrides:
            apply_override(config, item)
        return Recipe(validate(_plain(config), self.source), self.source, self.allow_import).checked()

    def checked(self) -> Recipe:
        """Build every step's components once, so a bad name, option or position spec fails now, not after
        the model has loaded.  Layer indices are checked when the model is known (at the start of fit)."""
        self.steerers()
        return self

    def section(self, key: str) -> Any:
        """Section `key` of this recipe as its typed dataclass (defaults where the recipe is silent)."""
        return read_section(self.config, key, self.source)

    # -- building ------------------------------------------------------------
    def steerers(self, callbacks: Sequence[Callback] = ()) -> list[Steerer]:
        fit: FitOptions = self.section("fit")
        model: ModelOptions = self.section("model")
        settings = {key: self.section(key) for key in section_names()}
        steerers = []
        for index, step in enumerate(self.config["steps"]):
            where = f"steps[{index}]"
            steerers.append(
                Steerer(
                    extractor=build(
                        EXTRACTORS, step.get("extractor", "diff_means"), f"{where}.extractor",
                        self.allow_import,
                    ),
                    selector=build(
                        SELECTORS, step.get("selector", "sweep"), f"{where}.selector", self.allow_import
                    ),
                    scaler=build(
                        SCALERS, step.get("scaler", "constant"), f"{where}.scaler", self.allow_import
                    ),
                    intervention=build(
                        INTERVENTIONS, step.get("intervention", "add"), f"{where}.intervention",
                        self.allow_import,
                    ),
                    positions=step.get("positions", "all"),
                    fit_positions=step.get("fit_positions", "decision"),
                    apply_layers=step.get("apply_layers", "selected"),
                    embedding=bool(step.get("embedding", False)),
                    site=str(step.get("site", "output")),
                    callbacks=callbacks,
                    batch_size=fit.batch_size,
                    validation_fraction=fit.validation_fraction,
                    seed=fit.seed,
                    name=str(step.get("name") or f"step{index}"),
                    layers_path=model.layers_path,
                    embedding_path=model.embedding_path,
                    settings=settings,
                )
            )
        return steerers

    def data_options(self, step_index: int | None = None) -> DataOptions:
        """The recipe's `data` section, with one step's own `data` keys on top."""
        data = dict(self.config.get("data") or {})
        if step_index is not None:
            data.update(self.config["steps"][step_index].get("data") or {})
        return read_section({"data": data}, "data", self.source)

    def prompts(self, step_index: int | None = None) -> tuple[Any, Any]:
        """(positive, negative) prompt sets of the recipe or of one step's own `data`."""
        data = self.data_options(step_index)
        kwargs = {"column": data.column, "limit": data.limit}
        return load_prompts(data.positive, **kwargs), load_prompts(data.negative, **kwargs)

    def split_prompts(self, step_index: int = 0) -> dict[str, list[str]]:
        """The prompts of step `step_index`, split exactly as the fit and the run split them.

        Keys "positive", "negative" (training: the direction), "positive_validation",
        "negative_validation" (layer selection and calibration) and "positive_test",
        "negative_test" (held out from the whole fit); a part is empty when its fraction is 0.
        Deterministic: the same recipe (data, seed, fractions) gives the same split.
        """
        fit: FitOptions = self.section("fit")
        positive, negative = self.prompts(step_index)
        parts: dict[str, list[str]] = {}
        for label, prompts in (("positive", positive), ("negative", negative)):
            rest, test = holdout_split(as_prompt_list(prompts, label), fit.test_fraction, fit.seed)
            train, validation = holdout_split(rest, fit.validation_fraction, fit.seed)
            parts.update({label: train, f"{label}_validation": validation, f"{label}_test": test})
        return parts

    def fit_prompts(self, step_index: int = 0) -> tuple[list[str], list[str]]:
        """(positive, negative) prompts step `step_index` fits on: everything but the test split."""
        fit: FitOptions = self.section("fit")
        positive, negative = self.prompts(step_index)
        return (holdout_split(as_prompt_list(positive, "positive"), fit.test_fraction, fit.seed)[0],
                holdout_split(as_prompt_list(negative, "negative"), fit.test_fraction, fit.seed)[0])

    def fit(self, model: Any, tokenizer: Any, callbacks: Sequence[Callback] = ()) -> Plan:
        """Fit every step in order and chain them into one plan (steps apply in recipe order).

        A step never sees the test split (`fit.test_fraction`); the Steerer splits the rest into
        training and validation prompts itself, exactly as `split_prompts` does.
        """
        plans = []
        for index, steerer in enumerate(self.steerers(callbacks)):
            positive, negative = self.fit_prompts(index)
            plans.append(steerer.fit(model, tokenizer, positive, negative))
        plan = chain_plans(plans)
        plan.metadata["recipe"] = self.config
        plan.metadata["recipe_name"] = self.name
        return plan


def chain_plans(plans: Sequence[Plan]) -> Plan:
    """One plan applying the steps of several, in order."""
    if not plans:
        raise ConfigError("A recipe needs at least one step.")
    steps = [step for plan in plans for step in plan.steps]
    names = [step.name for step in steps]
    if len(set(names)) != len(names):
        raise ConfigError(f"Step names must be unique, got {names}; set a distinct 'name' on each step.")
    metadata: dict[str, Any] = {"steps": {}}
    for plan in plans:
        metadata["steps"].update(plan.metadata.get("steps", {}))
    return Plan(steps, dict(plans[0].model_info), metadata)


def build(registry: Registry[Any], spec: Any, where: str, allow_import: bool) -> Any:
    """A component from `"name"` or `{name: ..., option: value}`."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{where} must be a name or a mapping with a 'name' key, got {spec!r}.")
    params = {k: v for k, v in spec.items() if k != "name"}
    try:
        return registry.build(str(spec["name"]), params, allow_import=allow_import)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _plain(config: Any) -> dict[str, Any]:
    if isinstance(config, (DictConfig, ListConfig)):
        config = OmegaConf.to_container(config, resolve=True)
    if not isinstance(config, dict):
        raise ConfigError("A recipe must be a YAML mapping at the top level.")
    return config


def validate(config: dict[str, Any], source: str) -> dict[str, Any]:
    """Check keys and values against the registered sections, suggesting the nearest name for typos."""
    check_top_level(config, source)
    for key in section_names():
        read_section(config, key, source)
    steps = config.get("steps")
    if not steps or not isinstance(steps, list):
        raise ConfigError(f"{source}: 'steps' must be a non-empty list of steering steps.")
    for index, step in enumerate(steps):
        if not isinstance(step, dict):
            raise ConfigError(f"{source}: steps[{index}] must be a mapping.")
        for key in step:
            if key not in STEP_KEYS:
                raise ConfigError(f"{source}: steps[{index}] has unknown key "
                                  f"{key!r}.{suggest(key, STEP_KEYS)} Valid keys: {', '.join(STEP_KEYS)}.")
        if step.get("data") is not None:
            read_section({"data": step["data"]}, "data", f"{source}: steps[{index}]")
    return config


def load_recipe(source: str | os.PathLike | dict[str, Any], overrides: Sequence[str] = ()) -> Recipe:
    """A recipe from a YAML path, a built-in name (`mars`, `actadd`, ...) or a dict."""
    if isinstance(source, dict):
        return (
            Recipe(validate(dict(source), "<dict>"), "<dict>", allow_import=True) .with_overrides(overrides)
            .checked()
        )
    path = Path(source)
    if not path.suffix and not path.exists():
        path = RECIPES_DIR / f"{source}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
            raise ConfigError(f"No recipe named {str(source)!r}.{suggest(str(source), known)} "
                              f"Built-in recipes: {', '.join(known)}; or pass a path to a YAML file.")
    if not path.is_file():
        raise ConfigError(f"Recipe file {path} does not exist.")
    if "${oc.env" in path.read_text(encoding="utf-8", errors="replace"):
        raise ConfigError(f"{path} reads environment variables (${{oc.env:...}}), which recipes may not do: "
                          "a fitted plan stores its recipe, so a secret could end up in a shared adapter. "
                          "Pass the value as an override instead (key.path=value).")
    try:
        loaded = OmegaConf.load(path)
    except (OmegaConfBaseException, Exception) as exc:  # yaml errors carry their own classes
        raise ConfigError(f"{path} is not a valid recipe YAML ({type(exc).__name__}: {exc}). "
                          "Only plain YAML is accepted: no !!python tags.") from exc
    return (
        Recipe(validate(_plain(loaded), str(path)), str(path), allow_import=True) .with_overrides(overrides)
        .checked()
    )
