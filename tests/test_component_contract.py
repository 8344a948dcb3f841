"""The contract every registered component and recipe section keeps, checked for each one.

Like a common tester that runs the same checks on every method: a component built from its
registry name rebuilds equal from its own config; its fitted tensors survive a state round trip
(fitted for real on a tiny model, not filled by hand); a misspelt option fails with a
`ConfigError` that names the right one.  A component registered later is covered automatically.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from plans import MORE_HARMFUL, MORE_HARMLESS
from tiny_models import tiny_text_model

from steerpeft import Steerer
from steerpeft.callbacks import CALLBACKS
from steerpeft.errors import ConfigError
from steerpeft.extractors import EXTRACTORS
from steerpeft.interventions import INTERVENTIONS
from steerpeft.recipes.sections import read_section, section_keys, section_names
from steerpeft.scalers import SCALERS
from steerpeft.selectors import SELECTORS

REGISTRIES = (EXTRACTORS, SELECTORS, SCALERS, INTERVENTIONS)
COMPONENTS = [(registry, name) for registry in REGISTRIES for name in registry.names()]
CALLBACK_NAMES = CALLBACKS.names()
SAMPLE_OPTIONS = {
    "fixed": {"layers": 1},
    "mars": {"candidates": [1, 2], "limits": {"kl": 0.5}},
    "sweep": {"candidates": [1, 2]},
    "conditional": {"alpha": 3.0},
    "trust_region": {"form": "beta", "rho": 2.0},
    "clamp": {"target": 2.5},
    "probe": {"l2": 0.1},
}


def _misspelt(name: str) -> str:
    """`name` with its last letter changed (never the same name)."""
    return name[:-1] + ("y" if name[-1] != "y" else "z")


def _options(component: object) -> list[str]:
    return [f.name for f in dataclasses.fields(component) if f.init]  # type: ignore[arg-type]


@pytest.mark.parametrize(("registry", "name"), COMPONENTS, ids=[f"{r.family}-{n}" for r, n in COMPONENTS])
def test_build_to_config_build_is_equal(registry, name) -> None:
    component = registry.build(name, SAMPLE_OPTIONS.get(name, {}))
    config = component.to_config()
    assert config["name"] == name
    rebuilt = registry.build(config["name"], config["params"])
    assert type(rebuilt) is type(component) and rebuilt == component


@pytest.mark.parametrize(("registry", "name"), COMPONENTS, ids=[f"{r.family}-{n}" for r, n in COMPONENTS])
def test_a_misspelt_option_is_refused_with_a_suggestion(registry, name) -> None:
    options = _options(registry.get(name))
    if not options:
        with pytest.raises(ConfigError, match="has no option 'strength'"):
            registry.build(name, {"strength": 1})
        return
    wanted = max(options, key=len)
    with pytest.raises(ConfigError, match=f"Did you mean '{wanted}'"):
        registry.build(name, {_misspelt(wanted): 1})


@pytest.mark.parametrize("name", CALLBACK_NAMES)
def test_callbacks_rebuild_from_their_fields(name, tmp_path) -> None:
    options = {"path": str(tmp_path / "log.jsonl")} if name == "jsonl" else {}
    callback = CALLBACKS.build(name, options)
    fields = {f.name: getattr(callback, f.name) for f in dataclasses.fields(callback) if f.init}
    assert CALLBACKS.build(name, fields) == callback
    wanted = max(fields, key=len)
    with pytest.raises(ConfigError, match=f"Did you mean '{wanted}'"):
        CALLBACKS.build(name, {_misspelt(wanted): 1})


@pytest.fixture(scope="module")
def fitted_scalers():
    """Every registered scaler fitted for real on a tiny model (the MARS selector for the gate)."""
    torch.set_num_threads(1)
    model, tok = tiny_text_model("llama")
    fitted = {}
    for name in SCALERS.names():
        selector = SELECTORS.build("mars", {"candidates": [1, 2], "on_no_layer": "best"}) \
            if name == "trust_region" else SELECTORS.build("fixed", {"layers": 1})
        steerer = Steerer(
            EXTRACTORS.build("diff_means"), selector, SCALERS.build(name), INTERVENTIONS.build("add"),
            positions="decision", batch_size=4, validation_fraction=0.5,
        )
        fitted[name] = steerer.fit(model, tok, MORE_HARMFUL, MORE_HARMLESS).steps[0].scaler
    return fitted


@pytest.mark.parametrize("name", SCALERS.names())
def test_fitted_state_survives_a_round_trip(fitted_scalers, name) -> None:
    scaler = fitted_scalers[name]
    config = scaler.to_config()
    rebuilt = SCALERS.build(config["name"], config["params"])
    state = scaler.state_dict()
    rebuilt.load_state_dict({key: value.clone() for key, value in state.items()})
    again = rebuilt.state_dict()
    assert sorted(again) == sorted(state)
    for key, value in state.items():
        assert torch.equal(again[key], value), key
    assert rebuilt.to_config() == config


@pytest.mark.parametrize("key", section_names())
def test_recipe_sections_take_their_fields_and_refuse_others(key) -> None:
    defaults = read_section({}, key)
    assert dataclasses.is_dataclass(defaults)
    assert [f.name for f in dataclasses.fields(defaults) if f.init] == section_keys(key)
    wanted = max(section_keys(key), key=len)
    with pytest.raises(ConfigError, match=f"Did you mean '{wanted}'"):
        read_section({key: {_misspelt(wanted): 1}}, key)


def test_the_fitted_gate_has_state_to_round_trip(fitted_scalers) -> None:
    """Guard for the round trip above: the trust region really carries fitted tensors."""
    state = fitted_scalers["trust_region"].state_dict()
    assert any(key.endswith(".unit") for key in state) and fitted_scalers["trust_region"].tau is not None
