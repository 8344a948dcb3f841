"""Recipes: YAML files that say what to fit and how, read with omegaconf.

A recipe names components by registry name (or, in a recipe you wrote, by
`package.module:Class`), so custom extractors, selectors, scalers and
interventions plug in without code changes.  Unknown keys fail early with the
nearest valid name suggested.  YAML is parsed with a safe loader: tags such as
`!!python/object` are refused.
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
from steerpeft.errors import ConfigError
from steerpeft.extractors import EXTRACTORS
from steerpeft.interventions import INTERVENTIONS
from steerpeft.mars.calibration import SEGMENTS
from steerpeft.plan import Plan
from steerpeft.registry import Registry, suggest
from steerpeft.scalers import SCALERS
from steerpeft.selectors import SELECTORS

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"

SCHEMA: dict[str, Any] = {
    "name": None,
    "description": None,
    "model": {"name": None, "dtype": None, "device": None, "revision": None, "layers_path": None, "embedding_path": None},
    "data": {"positive": None, "negative": None, "column": None, "limit": None},
    "fit": {"batch_size": None, "validation_fraction": None, "seed": None},
    "steps": None,
    "media": {"images": None, "videos": None, "video_frames": None, "seed": None, "segment": None},
    "eval": {"max_new_tokens": None, "prompts": None, "generate": None, "batch_size": None, "ablations": None},
    "output": {"dir": None, "export": None, "plots": None},
}
STEP_KEYS = ["name", "extractor", "selector", "scaler", "intervention", "positions", "fit_positions",
             "apply_layers", "embedding", "site", "data"]
DEFAULTS: dict[str, Any] = {
    "model": {"name": None, "dtype": "float32"},
    "data": {"positive": "builtin:harmful", "negative": "builtin:harmless"},
    "fit": {"batch_size": 16, "validation_fraction": 0.25, "seed": 0},
    "output": {"dir": None},
}


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

    # -- building ------------------------------------------------------------
    def steerers(self, callbacks: Sequence[Callback] = ()) -> list[Any]:
        from steerpeft.steerer import Steerer

        fit = {**DEFAULTS["fit"], **(self.config.get("fit") or {})}
        model = self.config.get("model") or {}
        steerers = []
        for index, step in enumerate(self.config["steps"]):
            where = f"steps[{index}]"
            steerers.append(
                Steerer(
                    extractor=build(EXTRACTORS, step.get("extractor", "diff_means"), f"{where}.extractor", self.allow_import),
                    selector=build(SELECTORS, step.get("selector", "sweep"), f"{where}.selector", self.allow_import),
                    scaler=build(SCALERS, step.get("scaler", "constant"), f"{where}.scaler", self.allow_import),
                    intervention=build(INTERVENTIONS, step.get("intervention", "add"), f"{where}.intervention",
                                       self.allow_import),
                    positions=step.get("positions", "all"),
                    fit_positions=step.get("fit_positions", "decision"),
                    apply_layers=step.get("apply_layers", "selected"),
                    embedding=bool(step.get("embedding", False)),
                    site=str(step.get("site", "output")),
                    callbacks=callbacks,
                    batch_size=int(fit["batch_size"]),
                    validation_fraction=float(fit["validation_fraction"]),
                    seed=int(fit["seed"]),
                    name=str(step.get("name") or f"step{index}"),
                    layers_path=model.get("layers_path"),
                    embedding_path=model.get("embedding_path"),
                    extra={"media": dict(self.config.get("media") or {})},
                )
            )
        return steerers

    def prompts(self, step_index: int | None = None) -> tuple[Any, Any]:
        """(positive, negative) prompt sets of the recipe or of one step's own `data`."""
        from steerpeft.data import load_prompts

        data = {**DEFAULTS["data"], **(self.config.get("data") or {})}
        if step_index is not None:
            data.update(self.config["steps"][step_index].get("data") or {})
        limit = data.get("limit")
        kwargs = {"column": data.get("column"), "limit": int(limit) if limit else None}
        return load_prompts(data["positive"], **kwargs), load_prompts(data["negative"], **kwargs)

    def split_prompts(self, step_index: int = 0) -> dict[str, list[str]]:
        """The prompts step `step_index` fits on, split exactly as its fit splits them.

        Keys "positive", "negative" (training) and "positive_validation",
        "negative_validation" (empty when the recipe makes no validation split).
        Deterministic: the same recipe (data, seed, validation_fraction) gives the same split.
        """
        from steerpeft.steerer import as_prompt_list

        steerer = self.steerers()[step_index]
        positive, negative = self.prompts(step_index)
        pos_train, pos_val = steerer.split(as_prompt_list(positive, "positive"))
        neg_train, neg_val = steerer.split(as_prompt_list(negative, "negative"))
        return {"positive": pos_train, "negative": neg_train, "positive_validation": pos_val,
                "negative_validation": neg_val}

    def fit(self, model: Any, tokenizer: Any, callbacks: Sequence[Callback] = ()) -> Plan:
        """Fit every step in order and chain them into one plan (steps apply in recipe order)."""
        plans = []
        for index, steerer in enumerate(self.steerers(callbacks)):
            positive, negative = self.prompts(index)
            plans.append(steerer.fit(model, tokenizer, positive, negative))
        plan = chain_plans(plans)
        plan.metadata["recipe"] = self.config
        plan.metadata["recipe_name"] = self.name
        return plan


def apply_override(config: DictConfig, item: str) -> None:
    """Set one `key.path=value` override in place, with a clear error for impossible paths."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"Override {item!r} must look like key.path=value (e.g. model.dtype=bfloat16).")
    try:
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"]  # type: ignore[index]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"Override {item!r}: cannot parse the value {raw!r} ({exc}).") from exc
    parts = key.replace("[", ".").replace("]", "").split(".")
    if any(not part for part in parts):
        raise ConfigError(f"Override {item!r}: {key!r} is not a valid key path (empty part).")
    node: Any = config
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"Override {item!r}: {'.'.join(parts[:depth]) or 'the recipe'} is a list of "
                                  f"{len(node)} item(s); address one by index 0..{len(node) - 1}, e.g. "
                                  f"{'.'.join(parts[:depth])}.0.{'.'.join(parts[depth + 1:])}=...")
            node = node[int(part)]
        elif isinstance(node, DictConfig):
            if part not in node or node[part] is None:
                break  # a new subtree: validate() judges the keys
            node = node[part]
        else:
            raise ConfigError(f"Override {item!r}: {'.'.join(parts[:depth])} is the value {node!r}, not a "
                              f"mapping, so it has no key {part!r} ({where}).")
    if isinstance(node, ListConfig):
        last = parts[-1]
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"Override {item!r}: index {last!r} is out of range for a list of {len(node)} item(s).")
    elif not isinstance(node, (DictConfig, ListConfig)):
        raise ConfigError(f"Override {item!r}: {'.'.join(parts[:-1])} is the value {node!r}, not a mapping.")
    try:
        OmegaConf.update(config, ".".join(parts), value, merge=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"Bad override {item!r}: {exc}") from exc


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
    """Check keys against the schema, suggesting the nearest name for typos."""
    _check_mapping(config, SCHEMA, source)
    steps = config.get("steps")
    if not steps or not isinstance(steps, list):
        raise ConfigError(f"{source}: 'steps' must be a non-empty list of steering steps.")
    for index, step in enumerate(steps):
        if not isinstance(step, dict):
            raise ConfigError(f"{source}: steps[{index}] must be a mapping.")
        for key in step:
            if key not in STEP_KEYS:
                raise ConfigError(f"{source}: steps[{index}] has unknown key {key!r}.{suggest(key, STEP_KEYS)} "
                                  f"Valid keys: {', '.join(STEP_KEYS)}.")
    segment = (config.get("media") or {}).get("segment")
    if segment is not None and segment not in SEGMENTS:
        raise ConfigError(f"{source}: media.segment must be one of {', '.join(SEGMENTS)}, got {segment!r}."
                          f"{suggest(str(segment), list(SEGMENTS))}")
    return config


def _check_mapping(config: dict[str, Any], schema: dict[str, Any], where: str) -> None:
    for key, value in config.items():
        if key not in schema:
            raise ConfigError(f"{where}: unknown recipe key {key!r}.{suggest(str(key), list(schema))} "
                              f"Valid keys here: {', '.join(schema)}.")
        sub = schema[key]
        if isinstance(sub, dict) and value is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: '{key}' must be a mapping.")
            _check_mapping(value, sub, f"{where}: {key}")


def load_recipe(source: str | os.PathLike | dict[str, Any], overrides: Sequence[str] = ()) -> Recipe:
    """A recipe from a YAML path, a built-in name (`mars`, `actadd`, ...) or a dict."""
    if isinstance(source, dict):
        return Recipe(validate(dict(source), "<dict>"), "<dict>", allow_import=True).with_overrides(overrides).checked()
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
        raise ConfigError(f"{path} reads environment variables (${{oc.env:...}}), which recipes may not do: a fitted "
                          "plan stores its recipe, so a secret could end up in a shared adapter. Pass the value as an "
                          "override instead (key.path=value).")
    try:
        loaded = OmegaConf.load(path)
    except (OmegaConfBaseException, Exception) as exc:  # yaml errors carry their own classes
        raise ConfigError(f"{path} is not a valid recipe YAML ({type(exc).__name__}: {exc}). "
                          "Only plain YAML is accepted: no !!python tags.") from exc
    return Recipe(validate(_plain(loaded), str(path)), str(path), allow_import=True).with_overrides(overrides).checked()
