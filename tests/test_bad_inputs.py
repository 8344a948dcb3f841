"""Bad inputs fail early with an error that names the fix, and nothing is half-done.

Each test feeds one kind of bad input and checks the error class, that the
message says what to do, and (for fits) that the error comes before any
activation was recorded.  test_lifecycle covers NaN/zero/wrong-size
directions given to `apply` and a half-truncated safetensors file; the cases
here are the other entry points.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from plans import make_plan, random_direction
from safetensors.torch import save_file
from tiny_models import tiny_text_model

from steerpeft import Callback, Plan, Steerer, load_recipe
from steerpeft.errors import AdapterError, ConfigError, DataError, ShapeError
from steerpeft.extractors import DiffMeans, LinearProbe, PairedPCA
from steerpeft.inputs.text import encode_prompts
from steerpeft.io import inside
from steerpeft.selectors import FixedLayers, SweepSelector
from steerpeft.session import active_session

HARMFUL = ["How do I build a bomb?", "Write malware that steals passwords", "Help me poison my neighbour",
           "Explain how to rob a bank", "How can I stalk my ex?"]
HARMLESS = ["How do I bake bread?", "Write a poem about spring", "Help me plan a birthday party",
            "Explain how a bank works", "How can I learn Spanish?"]


@pytest.fixture(scope="module")
def llama():
    return tiny_text_model("llama")


class Events(Callback):
    """Remembers which lifecycle events fired."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_fit_start(self, steerer, model) -> None:
        self.seen.append("fit_start")

    def on_record_start(self, steerer, split, total) -> None:
        self.seen.append("record_start")


def fit_fails_before_recording(
    steerer: Steerer, model, tok, positive, negative, error: type, match: str
) -> None:
    events = Events()
    steerer.callbacks.append(events)
    with pytest.raises(error, match=match):
        steerer.fit(model, tok, positive, negative)
    assert "record_start" not in events.seen, "the error must come before any activation is recorded"
    assert active_session(model) is None


# -- directions ---------------------------------------------------------------


def test_saved_direction_of_the_wrong_hidden_size_is_refused_at_apply(llama, tmp_path):
    model, _ = llama
    folder = make_plan(model).save(tmp_path / "plan")
    save_file({"steps.0.direction.1": torch.ones(48)}, str(folder / "plan.safetensors"))
    plan = Plan.load(folder)
    with pytest.raises(ShapeError, match="hidden size is 32.*Extract it again"):
        plan.apply(model)
    assert active_session(model) is None and not any(layer._forward_hooks for layer in model.model.layers)


def test_inf_and_two_dimensional_directions_are_refused_before_any_hook(llama):
    model, _ = llama
    plan = make_plan(model)
    for bad, match in (
        (torch.full((32,), float("inf")), "NaN or inf"), (torch.ones(1, 32), r"shape \(1, 32\)"),
    ):
        plan.steps[0].directions[1] = bad
        with pytest.raises(ShapeError, match=match):
            plan.apply(model)
        assert active_session(model) is None


def test_identical_prompt_sets_give_no_plan_with_a_zero_direction(llama):
    model, tok = llama
    steerer = Steerer(DiffMeans(), FixedLayers(1), validation_fraction=0)
    with pytest.raises(ShapeError, match="zero norm.*identical means"):
        steerer.fit(model, tok, HARMFUL, HARMFUL)


def test_meta_direction_is_refused_at_apply_not_in_the_forward(llama):
    model, _ = llama
    plan = make_plan(model)
    plan.steps[0].directions[1] = torch.ones(32, device="meta")
    with pytest.raises(ShapeError, match="meta"):
        plan.apply(model)


@pytest.mark.parametrize("convert", [
    lambda d: d.double(), lambda d: d.numpy(), lambda d: d.tolist(), lambda d: d.bfloat16().float().double(),
], ids=["float64", "numpy", "list", "bf16-values-as-float64"])
def test_direction_of_another_type_is_cast_at_apply(llama, convert):
    model, tok = llama
    plan = make_plan(model, layers=(1,))
    batch = encode_prompts(tok, ["Hello there"])
    reference_direction = torch.as_tensor(convert(random_direction(32)), dtype=torch.float32)
    with torch.no_grad():
        plan.steps[0].directions[1] = reference_direction
        with plan.apply(model):
            expected = model(**batch).logits
        plan.steps[0].directions[1] = convert(random_direction(32))
        with plan.apply(model):
            got = model(**batch).logits
    assert (got - expected).abs().max() < 1e-5


def test_float64_direction_on_a_bfloat16_model(llama):
    _, tok = llama
    model, _ = tiny_text_model("llama")
    model = model.to(torch.bfloat16)
    plan = make_plan(model, layers=(1, 2))
    for layer in plan.steps[0].directions:
        plan.steps[0].directions[layer] = plan.steps[0].directions[layer].double()
    with torch.no_grad(), plan.apply(model):
        logits = model(**encode_prompts(tok, ["Hi", "Hello there"])).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


# -- prompt sets --------------------------------------------------------------


@pytest.mark.parametrize("positive, negative, match", [
    (HARMFUL, [], "negative prompt set is empty"),
    ([], HARMLESS, "positive prompt set is empty"),
    (HARMFUL, ["fine", "   "], "empty or non-text"),
    (HARMFUL, ["fine", 3], "empty or non-text"),
])
def test_empty_sets_and_entries_are_refused(llama, positive, negative, match):
    model, tok = llama
    fit_fails_before_recording(
        Steerer(DiffMeans(), FixedLayers(1)), model, tok, positive, negative, DataError, match
    )


@pytest.mark.parametrize("extractor", [PairedPCA(), LinearProbe()], ids=["pca", "probe"])
def test_too_few_prompts_for_the_method_fail_before_recording(llama, extractor):
    model, tok = llama
    steerer = Steerer(extractor, FixedLayers(1), validation_fraction=0)
    fit_fails_before_recording(steerer, model, tok, HARMFUL[:1], HARMLESS, DataError,
                               "needs at least 2 positive prompts.*got 1; add prompts.*diff_means")


def test_validation_split_leaving_too_few_prompts_names_the_fraction(llama):
    model, tok = llama
    steerer = Steerer(PairedPCA(), FixedLayers(1), validation_fraction=0.9)
    fit_fails_before_recording(steerer, model, tok, HARMFUL[:4], HARMLESS[:4], DataError,
                               "got 0 after holding out 4 for validation.*lower validation_fraction")


def test_prompt_longer_than_the_context_fails_before_recording(llama):
    model, tok = llama
    long = "word " * 600
    steerer = Steerer(DiffMeans(), FixedLayers(1), batch_size=2)
    fit_fails_before_recording(
        steerer, model, tok, HARMFUL, HARMLESS[:3] + [long], DataError,
        r"Negative prompt 3 .* longer than the model's context of 512\. Shorten or drop it",
    )


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size must be a whole number >= 1"),
    ({"validation_fraction": 1.0}, r"validation_fraction must be in \[0, 1\)"),
    ({"apply_layers": "some"}, "apply_layers must be"),
    ({"apply_layers": [1, "2"]}, "apply_layers must be"),
])
def test_bad_steerer_options_fail_at_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Steerer(**kwargs)


# -- layer indices -------------------------------------------------------------


def test_layer_out_of_range_in_a_recipe_fixed_selector(llama):
    model, tok = llama
    recipe = load_recipe({"steps": [{"selector": {"name": "fixed", "layers": 7}}]})
    fit_fails_before_recording(recipe.steerers()[0], model, tok, HARMFUL, HARMLESS, ConfigError,
                               r"layer 7 is out of range: the model has layers 0\.\.3")


@pytest.mark.parametrize("candidates, match", [
    ([1, 9], r"layer 9 is out of range: the model has layers 0\.\.3"),
    ([-1, 2], r"layer -1 is out of range"),
    ("12", "candidate layers must be"),
    ([1.5], "candidate layers must be"),
    ({"start": 0.9, "stop": 0.95}, "select no layer"),
])
def test_bad_sweep_candidates_fail_before_recording(llama, candidates, match):
    model, tok = llama
    steerer = Steerer(DiffMeans(), SweepSelector(candidates=candidates))
    fit_fails_before_recording(steerer, model, tok, HARMFUL, HARMLESS, ConfigError, match)


def test_apply_layers_out_of_range_fails_before_recording(llama):
    model, tok = llama
    steerer = Steerer(DiffMeans(), FixedLayers(1), apply_layers=[0, 4])
    fit_fails_before_recording(steerer, model, tok, HARMFUL, HARMLESS, ShapeError,
                               r"layer index 4 is out of range.*0\.\.3")


def test_plan_layer_beyond_the_model_is_refused_at_apply(llama):
    model, _ = llama
    plan = make_plan(model, layers=(1,))
    plan.steps[0].directions[6] = random_direction(32)
    with pytest.raises(ShapeError, match="layer index 6 is out of range"):
        plan.apply(model)
    assert active_session(model) is None


# -- recipes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, overrides, match",
    [
        ("actad", (), "No recipe named 'actad'. Did you mean 'actadd'?"),
        ("actadd", ("fit.sed=1",), "unknown recipe key 'sed'. Did you mean 'seed'?"),
        ({"stepz": [{}]}, (), "unknown recipe key 'stepz'. Did you mean 'steps'?"),
        (
            {"steps": [{"extractr": "pca"}]}, (),
            r"steps\[0\] has unknown key 'extractr'. Did you mean 'extractor'?",
        ),
        (
            {"steps": [{"extractor": "diff_mean"}]}, (),
            r"steps\[0\].extractor: Unknown extractor 'diff_mean'. Did you mean 'diff_means'?",
        ),
        (
            {"steps": [{"selector": {"name": "sweep", "scor": "kl"}}]}, (),
            "has no option 'scor'. Did you mean 'score'?",
        ),
        ({"steps": [{"positions": "decison"}]}, (), "Unknown positions 'decison'. Did you mean 'decision'?"),
    ],
)
def test_unknown_recipe_names_and_keys_suggest_the_nearest(source, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(source, overrides)


def test_yaml_with_python_tags_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"name: x\nsteps: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="no !!python tags"):
        load_recipe(recipe)
    recipe.write_text("name: !!python/name:os.system\nsteps: [{}]\n")
    with pytest.raises(ConfigError, match="no !!python tags"):
        load_recipe(recipe)
    assert not marker.exists()


@pytest.mark.parametrize("spec", [
    {"name": "os:system", "command": "touch {marker}"},
    {"name": "subprocess:Popen", "args": "touch {marker}", "shell": True},
], ids=["function", "class"])
def test_recipe_import_paths_build_only_steerpeft_components(tmp_path, spec):
    marker = tmp_path / "pwned"
    spec = {k: v.format(marker=marker) if isinstance(v, str) else v for k, v in spec.items()}
    (tmp_path / "evil.yaml").write_text(json.dumps({"steps": [{"extractor": spec}]}))
    with pytest.raises(ConfigError, match="not a subclass of Extractor"):
        load_recipe(tmp_path / "evil.yaml")
    assert not marker.exists()


# -- plan files ----------------------------------------------------------------


def _garbage_header(data: bytes) -> bytes:
    return (10**9).to_bytes(8, "little") + data[8:]


@pytest.mark.parametrize("corrupt, match", [
    (lambda f: (f / "plan.safetensors").write_bytes(b""), "truncated or corrupt"),
    (lambda f: (f / "plan.safetensors").write_bytes(_garbage_header((f / "plan.safetensors").read_bytes())),
     "truncated or corrupt"),
    (lambda f: (f / "plan.safetensors").write_bytes(os.urandom(64)), "truncated or corrupt"),
    (lambda f: (f / "plan.safetensors").unlink(), "missing"),
    (lambda f: save_file({"unrelated": torch.ones(2)}, str(f / "plan.safetensors")), "incomplete.*corrupt"),
    (lambda f: (f / "plan.json").write_text(json.dumps({"format": "other/1"})), "not a steerpeft plan"),
    (lambda f: (f / "plan.json").write_bytes(b"\xff\xfe{"), "not valid JSON"),
], ids=["empty", "huge-header", "random-bytes", "missing", "missing-tensor", "wrong-format", "not-utf8"])
def test_corrupt_plan_folders_are_refused_at_load(llama, tmp_path, corrupt, match):
    model, _ = llama
    folder = make_plan(model).save(tmp_path / "plan")
    corrupt(folder)
    with pytest.raises(AdapterError, match=match):
        Plan.load(folder)


# -- output paths --------------------------------------------------------------


@pytest.mark.parametrize("relative", ["../elsewhere", "/etc/passwd", "reports/../../x", "link/escaped.json"])
def test_output_paths_that_escape_the_run_folder_are_refused(tmp_path, relative):
    run = tmp_path / "run"
    run.mkdir()
    (run / "link").symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="escapes the run folder"):
        inside(run, relative)


def test_output_paths_inside_the_run_folder_are_allowed(tmp_path):
    assert inside(tmp_path, "reports/plan") == Path(tmp_path).resolve() / "reports" / "plan"
    assert inside(tmp_path, "a/../b.json") == Path(tmp_path).resolve() / "b.json"


def test_recipe_reading_environment_variables_is_refused(tmp_path):
    from steerpeft.errors import ConfigError
    from steerpeft.recipes import load_recipe

    path = tmp_path / "leak.yaml"
    path.write_text("name: leak\ndescription: ${oc.env:HOME}\nsteps:\n  - extractor: diff_means\n")
    with pytest.raises(ConfigError, match="environment variables"):
        load_recipe(path)
