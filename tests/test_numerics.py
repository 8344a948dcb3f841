"""Numerics and runtime safety: determinism, float32 accumulation, dtype caching, threads, Ctrl-C."""

from __future__ import annotations

import threading

import pytest
import torch
from plans import HARMFUL, HARMLESS, make_plan
from safetensors import safe_open
from tiny_models import tiny_text_model

from steerpeft import Callback, Steerer
from steerpeft.architectures import decoder_layers, resolve_layout
from steerpeft.extractors import DiffMeans, LinearProbe, PairedPCA
from steerpeft.inputs.text import encode_prompts
from steerpeft.selectors import FixedLayers, SweepSelector
from steerpeft.session import active_session


@pytest.fixture(scope="module")
def llama():
    return tiny_text_model("llama")


def _hook_count(model) -> int:
    layers = decoder_layers(model, resolve_layout(model))
    return sum(len(layer._forward_hooks) for layer in layers) + len(model._forward_pre_hooks)


# -- determinism and precision -------------------------------------------------


@pytest.mark.parametrize("extractor", [DiffMeans, PairedPCA, LinearProbe], ids=["diff_means", "pca", "probe"])
def test_same_seed_gives_bit_identical_fits(llama, extractor):
    model, tok = llama
    plans = [
        Steerer(extractor(), SweepSelector(candidates=[1, 2]), seed=3, batch_size=4).fit(
            model, tok, HARMFUL, HARMLESS
        )
        for _ in range(2)
    ]
    first, second = (plan.steps[0] for plan in plans)
    assert first.layers == second.layers
    for layer in first.layers:
        assert torch.equal(first.directions[layer], second.directions[layer])
    assert (
        plans[0].metadata["steps"]["step"]["layer_scores"]
        == plans[1].metadata["steps"]["step"]["layer_scores"]
    )


def test_bfloat16_model_accumulates_in_float32(llama, tmp_path):
    model, tok = llama
    reference = Steerer(DiffMeans(), FixedLayers([2, 3]), validation_fraction=0).fit(
        model, tok, HARMFUL, HARMLESS
    )
    half = tiny_text_model("llama")[0].to(torch.bfloat16)
    steerer = Steerer(DiffMeans(), FixedLayers([2, 3]), validation_fraction=0)
    plan = steerer.fit(half, tok, HARMFUL, HARMLESS)
    assert steerer.last_fit.positive.sums[2].dtype == torch.float32
    for layer in (2, 3):
        direction = plan.steps[0].directions[layer]
        assert direction.dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(direction, reference.steps[0].directions[layer], dim=0)
        assert cosine > 0.99, f"layer {layer}: cosine {float(cosine):.4f}"
    folder = plan.save(tmp_path / "plan")
    with safe_open(str(folder / "plan.safetensors"), "pt") as stored:
        assert {stored.get_tensor(k).dtype for k in stored.keys() if ".direction." in k}  # noqa: SIM118 == {torch.float32}


def test_float64_and_bfloat16_directions_are_stored_as_float32(llama, tmp_path):
    model, _ = llama
    plan = make_plan(model, layers=(1, 2))
    plan.steps[0].directions[1] = plan.steps[0].directions[1].double()
    plan.steps[0].directions[2] = plan.steps[0].directions[2].bfloat16()
    folder = plan.save(tmp_path / "plan")
    with safe_open(str(folder / "plan.safetensors"), "pt") as stored:
        assert {stored.get_tensor(k).dtype for k in stored.keys()} == {torch.float32}  # noqa: SIM118


# -- conversion cache ----------------------------------------------------------


def test_direction_is_converted_once_per_layer_device_and_dtype(llama):
    model, tok = llama
    plan = make_plan(model, layers=(1, 2))
    step = plan.steps[0]
    for layer in step.directions:
        step.directions[layer] = step.directions[layer].double()
    batch = encode_prompts(tok, ["Hi", "How are you?"])
    conversions = []
    original = step.tensors

    def counting(layer, like):
        if (layer, like.device, like.dtype) not in step._cache:
            conversions.append(layer)
        return original(layer, like)

    step.tensors = counting
    with torch.no_grad(), plan.apply(model):
        for _ in range(3):
            model(**batch)
        assert sorted(conversions) == [1, 2]
        assert sorted(step._cache) == [
            (1, torch.device("cpu"), torch.float32), (2, torch.device("cpu"), torch.float32),
        ]
        assert all(raw.dtype == torch.float32 for raw, _ in step._cache.values())
        assert (
            step._cache[1, torch.device("cpu"), torch.float32]
            is step._cache[2, torch.device("cpu"), torch.float32]
        ), "equal directions share one converted copy"
    assert not step._cache, "removing the plan frees the converted copies"


def test_a_direction_edited_between_applies_is_used(llama):
    model, tok = llama
    plan = make_plan(model, layers=(1,))
    batch = encode_prompts(tok, ["Hi"])
    with torch.no_grad():
        with plan.apply(model):
            before = model(**batch).logits
        plan.steps[0].directions[1] = -plan.steps[0].directions[1]
        with plan.apply(model):
            after = model(**batch).logits
        plan.steps[0].directions[1] = -plan.steps[0].directions[1]
        with plan.apply(model):
            again = model(**batch).logits
    assert (before - after).abs().max() > 1e-3 and torch.equal(before, again)


# -- threads and interrupts ----------------------------------------------------


def test_two_plans_on_two_models_in_two_threads_do_not_interfere(llama):
    model_a, tok = llama
    model_b, _ = tiny_text_model("qwen2", seed=1)
    plan_a = make_plan(model_a, "add", layers=(1, 2), positions="prompt", alpha=4.0, seed=1)
    plan_b = make_plan(model_b, "ablate", layers=(0, 1), positions="all", seed=2)
    batches = [
        encode_prompts(tok, ["Hi", "Tell me a story about a robot"]), encode_prompts(tok, ["What is 2+2?"]),
    ]

    def run(model, plan) -> list[torch.Tensor]:
        with torch.no_grad(), plan.apply(model):
            return [model(**batch).logits for batch in batches for _ in range(2)]

    expected = {"a": run(model_a, plan_a), "b": run(model_b, plan_b)}
    with torch.no_grad():
        plain = model_a(**batches[0]).logits
    assert (expected["a"][0] - plain).abs().max() > 1e-3, (
        "the plan must change the logits for the test to mean anything"
    )
    results: dict[str, list[torch.Tensor]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(name, model, plan) -> None:
        try:
            start.wait()
            results[name] = run(model, plan)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=("a", model_a, plan_a)),
               threading.Thread(target=worker, args=("b", model_b, plan_b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    for name in ("a", "b"):
        for got, want in zip(results[name], expected[name], strict=True):
            assert (got - want).abs().max() < 1e-6
    assert active_session(model_a) is None and active_session(model_b) is None


class InterruptAfterFirstBatch(Callback):
    def on_batch_end(self, steerer, split, rows) -> None:
        raise KeyboardInterrupt


def test_ctrl_c_during_recording_removes_every_hook(llama):
    model, tok = llama
    before = _hook_count(model)
    steerer = Steerer(DiffMeans(), FixedLayers(1), batch_size=2, callbacks=[InterruptAfterFirstBatch()])
    with pytest.raises(KeyboardInterrupt):
        steerer.fit(model, tok, HARMFUL, HARMLESS)
    assert _hook_count(model) == before and active_session(model) is None and "generate" not in model.__dict__


def test_ctrl_c_during_steered_generate_removes_every_hook(llama):
    model, tok = llama
    plan = make_plan(model, layers=(1,), positions="generated")
    before = _hook_count(model)
    calls = []

    def interrupt_on_third(module, args, output):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    handle = decoder_layers(model, resolve_layout(model))[3].register_forward_hook(interrupt_on_third)
    try:
        with pytest.raises(KeyboardInterrupt), torch.no_grad(), plan.apply(model):
            model.generate(**encode_prompts(tok, ["Hi"]), max_new_tokens=5, do_sample=False)
    finally:
        handle.remove()
    assert _hook_count(model) == before and active_session(model) is None and "generate" not in model.__dict__


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_float64_direction_on_a_cuda_model_is_moved_once(llama):
    model, tok = llama
    plan = make_plan(model, layers=(1,))
    plan.steps[0].directions[1] = plan.steps[0].directions[1].double()
    batch = encode_prompts(tok, ["Hi", "How are you?"])
    with torch.no_grad():
        with plan.apply(model):
            expected = model(**batch).logits
        gpu = tiny_text_model("llama")[0].cuda()
        with plan.apply(gpu):
            for _ in range(3):
                got = gpu(**{k: v.cuda() for k, v in batch.items()}).logits
    assert list(plan.steps[0]._cache) == [(1, torch.device("cuda", 0), torch.float32)]
    assert (got.cpu() - expected).abs().max() < 1e-3
