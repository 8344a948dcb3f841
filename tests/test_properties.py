"""Property tests: specs parse or fail at construction, steering is padding-blind, recipes refuse unknown
keys."""

from __future__ import annotations

import copy
import inspect
import string

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plans import make_plan
from tiny_models import tiny_text_model

from steerpeft import load_recipe
from steerpeft.errors import ConfigError
from steerpeft.positions import POSITION_KINDS, Positions, parse_positions
from steerpeft.recipes import SCHEMA, STEP_KEYS
from steerpeft.scalers import SCALERS
from steerpeft.selectors import SELECTORS

SIMPLE_KINDS = [kind for kind in POSITION_KINDS if kind != "first_generated"]
# database=None: no .hypothesis/ folder in the repository; failures print their reproducing example.
FAST = settings(max_examples=40, deadline=None, database=None)
MODEL = settings(
    max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# -- position specs -------------------------------------------------------------

positive_n = st.integers(min_value=1, max_value=10**6)
valid_strings = st.one_of(
    st.sampled_from(SIMPLE_KINDS),
    st.just("first_generated"),
    positive_n.map(lambda n: f"first_generated:{n}"),
)
valid_mappings = st.one_of(
    st.sampled_from(SIMPLE_KINDS).map(lambda kind: {"kind": kind}),
    st.just({"kind": "first_generated"}),
    positive_n.map(lambda n: {"kind": "first_generated", "n": n}),
)


@FAST
@given(spec=st.one_of(valid_strings, valid_mappings))
def test_valid_position_specs_parse_and_round_trip(spec):
    positions = parse_positions(spec)
    assert isinstance(positions, Positions)
    config = positions.to_config()
    assert parse_positions(config) == positions
    assert parse_positions(str(positions)) == positions
    assert parse_positions(positions) is positions


def _is_valid_string(text: str) -> bool:
    kind, colon, arg = text.partition(":")
    if kind in SIMPLE_KINDS:
        return not colon
    return kind == "first_generated" and (not colon or (arg.isascii() and arg.isdigit() and int(arg) >= 1))


@FAST
@given(
    text=st.one_of(
        st.text(max_size=20),
        st.sampled_from(list(POSITION_KINDS)).flatmap(
            lambda kind: st.text(max_size=6).map(lambda tail: kind + tail)
        ),
    )
)
def test_any_other_position_string_fails_at_construction(text):
    if _is_valid_string(text):
        parse_positions(text)
        return
    with pytest.raises(ConfigError):
        parse_positions(text)


@FAST
@given(
    n=st.one_of(
        st.integers(max_value=0), st.booleans(), st.floats(allow_nan=True), st.text(max_size=3), st.none()
    ),
)
def test_first_generated_needs_a_positive_whole_n(n):
    with pytest.raises(ConfigError):
        parse_positions({"kind": "first_generated", "n": n})


@FAST
@given(
    kind=st.sampled_from(list(POSITION_KINDS)),
    extra=st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda key: key not in ("kind", "n")),
                          st.integers(), min_size=1, max_size=3),
)
def test_extra_position_keys_fail_at_construction(kind, extra):
    with pytest.raises(ConfigError):
        parse_positions({"kind": kind, **extra})


@FAST
@given(spec=st.one_of(st.integers(), st.lists(st.integers(), max_size=2), st.floats()))
def test_non_spec_types_fail_at_construction(spec):
    with pytest.raises(ConfigError):
        parse_positions(spec)


# -- steering is exact under random left padding ---------------------------------


@pytest.fixture(scope="module")
def llama():
    return tiny_text_model("llama", num_layers=2)


@MODEL
@given(
    spec=valid_strings,
    kind=st.sampled_from(["add", "ablate", "clamp"]),
    rows=st.lists(
        st.tuples(st.lists(st.integers(min_value=2, max_value=49000), min_size=1, max_size=6),
                  st.integers(min_value=0, max_value=3)),
        min_size=1, max_size=3,
    ),
)
def test_steered_padded_batch_equals_unpadded_rows(llama, spec, kind, rows):
    model, tok = llama
    plan = make_plan(model, kind, layers=(0, 1), positions=spec, alpha=3.0)
    width = max(len(ids) + extra for ids, extra in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for row, (ids, _) in enumerate(rows):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        mask[row, width - len(ids):] = 1
    with torch.no_grad(), plan.apply(model):
        padded = model(input_ids=input_ids, attention_mask=mask).logits
        for row, (ids, _) in enumerate(rows):
            alone = model(
                input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)
            ).logits
            assert (padded[row, width - len(ids):] - alone[0]).abs().max() < 1e-4


# -- recipe configs ---------------------------------------------------------------

BASE = {"name": "prop", "fit": {"seed": 0, "batch_size": 4}, "steps": [
    {"name": "s", "extractor": "diff_means", "selector": {"name": "fixed", "layers": 1},
     "scaler": {"name": "constant", "alpha": 1.0}, "intervention": "add", "positions": "all"},
]}
MAPPING_SECTIONS = [key for key, sub in SCHEMA.items() if isinstance(sub, dict)]
COMPONENTS = ["selector", "scaler"]
identifier = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=10)


def _known_at(where: str) -> set[str]:
    if where == "top":
        return set(SCHEMA)
    if where == "step":
        return set(STEP_KEYS)
    if where in COMPONENTS:
        spec = BASE["steps"][0][where]
        registry = SELECTORS if where == "selector" else SCALERS
        return {"name", *inspect.signature(registry.get(spec["name"])).parameters}
    return set(SCHEMA[where])


@FAST
@given(where=st.sampled_from(["top", "step", *MAPPING_SECTIONS, *COMPONENTS]), key=identifier)
def test_unknown_recipe_keys_at_any_level_are_refused(where, key):
    if key in _known_at(where):
        return
    config = copy.deepcopy(BASE)
    if where == "top":
        config[key] = 1
    elif where == "step":
        config["steps"][0][key] = 1
    elif where in COMPONENTS:
        config["steps"][0][where][key] = 1
    else:
        config[where] = {key: 1}
    with pytest.raises(ConfigError, match=repr(key)):
        load_recipe(config)


@FAST
@given(where=st.sampled_from(["top", *MAPPING_SECTIONS]), key=identifier)
def test_unknown_override_keys_are_refused(where, key):
    if key in _known_at(where):
        return
    path = key if where == "top" else f"{where}.{key}"
    with pytest.raises(ConfigError):
        load_recipe(BASE, [f"{path}=1"])


@FAST
@given(seed=st.integers(min_value=0, max_value=2**31 - 1), batch=st.integers(min_value=1, max_value=512),
       fraction=st.floats(min_value=0.0, max_value=0.95))
def test_valid_overrides_are_accepted(seed, batch, fraction):
    recipe = load_recipe(
        BASE, [f"fit.seed={seed}", f"fit.batch_size={batch}", f"fit.validation_fraction={fraction!r}"]
    )
    assert recipe.config["fit"]["seed"] == seed and recipe.config["fit"]["batch_size"] == batch
    steerer = recipe.steerers()[0]
    assert (steerer.seed, steerer.batch_size) == (seed, batch)
    assert steerer.validation_fraction == pytest.approx(fraction)
