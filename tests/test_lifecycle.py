"""Hooks come and go cleanly; plans and steerers round-trip; callbacks fire in order."""

from __future__ import annotations

import json

import pytest
import torch
from plans import HARMFUL, HARMLESS, make_plan
from tiny_models import tiny_text_model

from steerpeft import Callback, JsonlLogger, Plan, Steerer
from steerpeft.architectures import decoder_layers, resolve_layout
from steerpeft.errors import AdapterError, DataError, ShapeError
from steerpeft.extractors import DiffMeans, LinearProbe, PairedPCA
from steerpeft.inputs.text import encode_prompts
from steerpeft.interventions import Ablate
from steerpeft.scalers import ConditionalScaler
from steerpeft.selectors import FixedLayers, SweepSelector
from steerpeft.session import active_session


@pytest.fixture(scope="module")
def llama():
    return tiny_text_model("llama")


def _hook_count(model) -> int:
    layout = resolve_layout(model)
    total = sum(len(layer._forward_hooks) for layer in decoder_layers(model, layout))
    return total + len(model._forward_pre_hooks)


def test_hooks_removed_on_exit_and_on_exception(llama):
    model, _ = llama
    plan = make_plan(model, layers=(0, 1))
    before = _hook_count(model)
    with plan.apply(model):
        assert _hook_count(model) > before
        assert "generate" in model.__dict__
    assert _hook_count(model) == before and "generate" not in model.__dict__ and active_session(model) is None
    with pytest.raises(RuntimeError, match="boom"), plan.apply(model):
        raise RuntimeError("boom")
    assert _hook_count(model) == before and active_session(model) is None
    with pytest.raises(KeyboardInterrupt), plan.apply(model):
        raise KeyboardInterrupt
    assert _hook_count(model) == before


def test_nested_contexts_compose_in_order(llama):
    model, tok = llama
    batch = encode_prompts(tok, ["Hello"])
    first = make_plan(model, "add", layers=(1,), alpha=1.0, seed=1)
    second = make_plan(model, "add", layers=(1,), alpha=2.0, seed=2)
    both = Plan(first.steps + second.steps, first.model_info)
    with torch.no_grad():
        with first.apply(model), second.apply(model):
            nested = model(**batch).logits
        with both.apply(model):
            chained = model(**batch).logits
        with first.apply(model):
            with second.apply(model):
                pass
            only_first = model(**batch).logits
        with first.apply(model):
            reference_first = model(**batch).logits
    assert (nested - chained).abs().max() < 1e-5
    assert (only_first - reference_first).abs().max() == 0


def test_plan_save_load_round_trip(llama, tmp_path):
    model, tok = llama
    plan = make_plan(model, "ablate", layers=(0, 2), positions="first_generated:3")
    plan.save(tmp_path / "plan")
    loaded = Plan.load(tmp_path / "plan")
    batch = encode_prompts(tok, ["Hello", "How are you today?"])
    with torch.no_grad():
        with plan.apply(model):
            a = model.generate(
                **batch, max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True
            )
        with loaded.apply(model):
            b = model.generate(
                **batch, max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True
            )
    assert (torch.stack(a.scores) - torch.stack(b.scores)).abs().max() == 0
    assert str(loaded.steps[0].positions) == "first_generated:3"


def test_corrupt_plan_files_are_refused(llama, tmp_path):
    model, _ = llama
    folder = make_plan(model).save(tmp_path / "plan")
    data = (folder / "plan.safetensors").read_bytes()
    (folder / "plan.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="truncated or corrupt"):
        Plan.load(folder)
    (folder / "plan.json").write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        Plan.load(folder)


def test_plan_for_another_model_is_refused(llama):
    model, _ = llama
    other, _ = tiny_text_model("qwen2")
    plan = make_plan(model)
    plan.model_info["hidden_size"] = 999
    with pytest.raises(ShapeError, match="hidden_size"):
        plan.apply(other)


def test_bad_directions_are_refused(llama):
    model, _ = llama
    plan = make_plan(model)
    plan.steps[0].directions[1] = torch.full((32,), float("nan"))
    with pytest.raises(ShapeError, match="NaN"):
        plan.apply(model)
    plan.steps[0].directions[1] = torch.zeros(32)
    with pytest.raises(ShapeError, match="zero norm"):
        plan.apply(model)
    plan.steps[0].directions[1] = torch.ones(7)
    with pytest.raises(ShapeError, match="hidden size"):
        plan.apply(model)
    assert active_session(model) is None


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            return lambda steerer, **kw: object.__getattribute__(self, "events").append(name)
        return object.__getattribute__(self, name)


@pytest.mark.parametrize("extractor", [DiffMeans(), PairedPCA(), LinearProbe()])
def test_steerer_fit_lifecycle(llama, tmp_path, extractor):
    model, tok = llama
    recorder = Recorder()
    steerer = Steerer(extractor, SweepSelector(candidates=[1, 2]), intervention=Ablate(),
                      callbacks=[recorder, JsonlLogger(str(tmp_path / "m.jsonl"))], batch_size=4)
    plan = steerer.fit(model, tok, HARMFUL, HARMLESS)
    assert plan.steps[0].layers in ([1], [2])
    table = plan.metadata["steps"]["step"]["layer_scores"]
    assert [row["layer"] for row in table] == [1, 2] and sum(row["chosen"] for row in table) == 1
    events = recorder.events
    assert events[0] == "on_fit_start" and events[-1] == "on_fit_end"
    order = [
        "on_record_start", "on_directions_computed", "on_layer_scored", "on_layer_selected",
        "on_scaler_calibrated",
    ]
    assert [events.index(e) for e in order] == sorted(events.index(e) for e in order)
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert {"fit_start", "layer_scored", "fit_end"} <= {line["event"] for line in lines}


def test_diff_means_equals_hand_computed_means(llama):
    model, tok = llama
    steerer = Steerer(DiffMeans(), FixedLayers(2), validation_fraction=0)
    plan = steerer.fit(model, tok, HARMFUL, HARMLESS)
    layer = resolve_layout(model)
    captured = {}

    def hook(mod, args, out):
        captured["h"] = out[0] if isinstance(out, tuple) else out

    handle = decoder_layers(model, layer)[2].register_forward_hook(hook)
    means = []
    with torch.no_grad():
        for prompts in (HARMFUL, HARMLESS):
            rows = []
            for prompt in prompts:
                model(**encode_prompts(tok, [prompt]))
                rows.append(captured["h"][0, -1])
            means.append(torch.stack(rows).mean(0))
    handle.remove()
    assert (plan.steps[0].directions[2] - (means[0] - means[1])).abs().max() < 1e-5


def test_conditional_scaler_steers_only_flagged_rows(llama):
    model, tok = llama
    steerer = Steerer(DiffMeans(), FixedLayers(2), ConditionalScaler(alpha=5.0), validation_fraction=0)
    plan = steerer.fit(model, tok, HARMFUL, HARMLESS)
    scaler = plan.steps[0].scaler
    assert scaler.threshold is not None and scaler.condition_layer == 2
    batch = encode_prompts(tok, HARMFUL[:2] + HARMLESS[:2])
    with torch.no_grad():
        plain = model(**batch).logits
        with plan.apply(model):
            steered = model(**batch).logits
        captured = {}
        handle = decoder_layers(model, resolve_layout(model))[2].register_forward_hook(
            lambda m, a, o: captured.__setitem__("h", o[0] if isinstance(o, tuple) else o))
        model(**batch)
        handle.remove()
    unit = plan.steps[0].directions[2] / plan.steps[0].directions[2].norm()
    flagged = (captured["h"][:, -1] @ unit) > scaler.threshold
    changed = (steered - plain).abs().amax(dim=(1, 2)) > 0
    assert torch.equal(flagged, changed)


def test_empty_prompt_sets_are_refused(llama):
    model, tok = llama
    with pytest.raises(DataError, match="empty"):
        Steerer().fit(model, tok, [], HARMLESS)
    with pytest.raises(DataError, match="at least 2"):
        Steerer(PairedPCA(), FixedLayers(1), validation_fraction=0).fit(model, tok, HARMFUL[:1], HARMLESS[:1])
