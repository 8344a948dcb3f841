"""Smoke runs of the benchmark scripts on a tiny CPU model (no timing asserts).

Each script runs in-process with `--smoke`; the tests check the JSON has the expected rows and
that steered rows really steered, so a benchmark cannot silently time nothing.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import benchlib as B


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(autouse=True)
def _restore_threads():
    """--smoke runs use 1 torch thread; give the rest of the suite its own setting back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_generate_smoke(tmp_path: Path) -> None:
    import bench_generate

    out = tmp_path / "generate.json"
    bench_generate.main(["--smoke", "--out", str(out)])
    result = _json(out)
    assert result["benchmark"] == "generate"
    assert set(result["batches"]) == {"1", "3"}
    for batch in result["batches"].values():
        rows = batch["rows"]
        expected = {"unsteered", "actadd", "mars", "ablate_hooks", "ablate_merged"}
        if B.supports_writer_site():
            expected.add("ablate_writers")
        assert set(rows) == expected
        for name, entry in rows.items():
            assert entry["check"]["finite"]
            assert entry["total_tok_s"] > 0 and len(entry["runs"]["total_s"]) == 1
            if name != "unsteered":
                assert entry["check"]["steered"], name
                assert entry["check"]["logit_diff_vs_unsteered"] > 1e-4, name
                assert "ratio_total_tok_s" in entry and "ratio_decode_tok_s" in entry
        assert set(batch["targets"]) == expected - {"unsteered"}
        # Merged weights ablate at every writer, layer-output hooks after each layer: close, not equal.
        merged = rows["ablate_merged"]["check"]
        assert merged["logit_diff_vs_hooks"] < 0.25 * merged["logit_scale"]
        if "ablate_writers" in rows:
            assert merged["logit_diff_vs_writers"] < 1e-4  # writer-site hooks are the weight edit


def test_merged_weights_equal_writer_level_ablation() -> None:
    """Both ways the benchmark merges the ablation (steerpeft's LoRA export + PEFT merge when present,
    its own in-place edit otherwise) equal ablating every residual writer and the embedding."""
    import copy

    from steerpeft.architectures import get_module

    loaded = B.build_model("tiny", torch.device("cpu"), torch.float32)
    unit = B.random_unit(loaded.layout.hidden_size, 3)
    batch = B.generation_batch(loaded, 2, 6, 0)
    merged, _how = B.merged_ablation_model(loaded, B.ablation_plan(loaded, unit), unit)
    edited = copy.deepcopy(loaded.model)
    B.orthogonalize_in_place(edited, loaded.layout, unit)
    for model in (merged, edited):
        assert type(model) is type(loaded.model)  # a plain model: no adapter, no hooks
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
        assert model.lm_head.weight is not model.model.embed_tokens.weight  # the tied head keeps the original
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight  # the original is untouched

    def remove(module, args, output):
        return output - (output @ unit)[..., None] * unit

    paths = [p for i in range(loaded.layout.num_layers) for p in loaded.layout.residual_writer_paths(i)]
    handles = [get_module(loaded.model, p).register_forward_hook(remove) for p in paths]
    handles.append(get_module(loaded.model, loaded.layout.embedding_path).register_forward_hook(remove))
    try:
        with torch.no_grad():
            reference = loaded.model(**batch).logits
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, reference, atol=1e-5)
        assert torch.allclose(edited(**batch).logits, reference, atol=1e-5)
        assert not torch.allclose(loaded.model(**batch).logits, reference, atol=1e-3)


def test_extract_smoke(tmp_path: Path) -> None:
    import bench_extract

    out = tmp_path / "extract.json"
    bench_extract.main(["--smoke", "--out", str(out)])
    result = _json(out)
    batch = result["batches"]["4"]
    assert set(batch["rows"]) == {
        "plain_forward", "record_full", "record_early", "plain_forward_text", "steerer_fit",
    }
    for name in ("record_full", "record_early", "steerer_fit"):
        check = batch["rows"][name]["check"]
        assert check["direction_norm"] > 0 and check["finite"]
        assert check["rel_diff_vs_reference"] < 1e-4, name  # the timed code really extracted the direction
    assert batch["rows"]["record_early"]["check"]["last_layer_calls"] == 0  # early stop really stopped
    assert batch["rows"]["record_full"]["check"]["last_layer_calls"] > 0
    assert set(batch["targets"]) == {"record_full", "record_early", "steerer_fit"}


def _peers_installed() -> list[str]:
    return [name for name in ("steering_vectors", "repeng") if importlib.util.find_spec(name) is not None]


def test_peers_smoke(tmp_path: Path) -> None:
    installed = _peers_installed()
    if not installed:
        pytest.skip("no peer library installed (pip install --no-deps -r benchmarks/peer-requirements.txt)")
    import bench_peers

    out = tmp_path / "peers.json"
    bench_peers.main(["--smoke", "--out", str(out)])
    result = _json(out)
    usable = [name for name in installed if result["peers"][name]["status"] == "ok"]
    if not usable:
        pytest.skip(f"peers installed but unusable: {result['peers']}")
    for batch in result["generate"]["batches"].values():
        rows = batch["rows"]
        assert {"unsteered", "steerpeft", *usable} <= set(rows)
        for name in ("steerpeft", *usable):
            assert rows[name]["check"]["steered"], name
        for name in usable:
            assert rows[name]["check"]["logit_diff_vs_steerpeft"] < 1e-4, name  # the same intervention
    extract = result["extract"]["rows"]
    assert {"plain_forward_text", "steerpeft", *usable} <= set(extract)
    if "steering_vectors" in usable:
        assert extract["steering_vectors"]["check"]["cosine_vs_steerpeft"] > 0.999
    assert set(result["capabilities"]) == {"steerpeft", "steering_vectors", "repeng"}


def test_summarize_renders(tmp_path: Path) -> None:
    import bench_generate
    import summarize

    bench_generate.main(
        ["--smoke", "--batch-sizes", "2", "--rows", "unsteered,actadd", "--out", str(tmp_path / "g.json")]
    )
    text = summarize.main([str(tmp_path), "--out", str(tmp_path / "RESULTS.md")])
    assert "### Generation: tiny" in text and "`actadd`" in text and "torch " in text


def test_profile_hooks_smoke(tmp_path: Path) -> None:
    import profile_hooks

    out = tmp_path / "hooks.json"
    profile_hooks.main(["--smoke", "--out", str(out)])
    rows = _json(out)["rows"]
    assert rows["unsteered"]["extra_ops_per_step"] == 0
    assert rows["identity hooks x5"]["extra_ops_per_step"] == 0
    assert rows["steerpeft actadd x1"]["extra_ops_per_step"] > 0  # the hooks really ran in the profiled step
    assert (
        rows["steerpeft ablate outputs x5"]["extra_ops_per_step"]
        > rows["fused ablate hook x5"]["extra_ops_per_step"] > 0
    )


def test_main_job_smoke(tmp_path: Path) -> None:
    import bench_main_job

    out = tmp_path / "main_job.json"
    bench_main_job.main(["--smoke", "--out", str(out)])
    result = _json(out)
    assert result["benchmark"] == "main_job" and result["complete"]
    stages = result["stages"]
    for name in (
        "load", "floor_forward", "fit", "fit.recording_text", "fit.sweep", "fit_slow", "fit_slow.sweep",
        "floor_generate", "eval", "eval_slow",
    ):
        assert stages[name]["wall_s"] > 0, name
    fit = result["checks"]["fit"]
    assert fit["layers_scored"] == fit["layers"] > 0  # the sweep scored every candidate, from the callbacks
    assert set(fit["recorded_splits"]) == {
        "positive", "negative", "positive_validation", "negative_validation",
    }
    assert fit["same_layer"] and fit["same_layers"] and fit["same_exclusions"]
    assert fit["max_kl_diff"] < 1e-4 and fit["max_induce_diff"] < 1e-4  # shared prefix == full forwards
    check = result["checks"]["eval"]
    assert check["path"].startswith("evaluate_mars")  # the run's reuse path really ran
    assert check["same_conditions"] and check["texts_equal"] == check["texts_total"] > 0
    assert check["max_score_diff"] < 1e-4 and check["max_mean_kl_diff"] < 1e-4
    assert check["gate"]["max_t_diff"] < 1e-4 and check["gate"]["same_share_above_tau"]
    assert check["generated_rows"]["mars (no re-centering)"] == 0  # text rows reuse the plan's answers
    assert (
        check["generated_rows"]["unsteered"] == check["rows_per_condition"]
        == sum(result["settings"]["eval_rows"].values())
    )
    assert check["mean_kl_vs_unsteered"]["mars (fixed strength)"] > 1e-6  # the conditions really steer
    targets = result["targets"]
    assert targets["eval"]["ratio_max"] == 1 + len(check["conditions_that_differ"])
    assert set(targets) >= {"fit", "sweep", "eval"} and set(result["ratios_to_floor"]) >= {
        "fit", "fit.sweep", "eval",
    }
    import summarize

    text = summarize.main([str(out)])
    assert "### Main job" in text and "`fit.sweep`" in text and "answers equal" in text


def test_main_job_7b_shapes() -> None:
    """The GPU modes' shapes are the released models' (7.6 B text, 8.3 B with the vision tower), built on the
    meta device: no memory, no tokenizer needed."""
    from transformers import (
        AutoModelForCausalLM,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2Config,
    )

    text = B.qwen_text_settings(151665)
    assert text["vocab_size"] == 152064
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Qwen2Config(**text), dtype=torch.bfloat16)
    assert 7.5e9 < B.parameter_count(model) < 7.7e9
    vision = {**B.qwen_vision_settings(), "out_hidden_size": text["hidden_size"]}
    config = Qwen2_5_VLConfig(text_config={**text, "model_type": "qwen2_5_vl_text"}, vision_config=vision)
    with torch.device("meta"):
        vlm = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    assert 8.2e9 < B.parameter_count(vlm) < 8.4e9
