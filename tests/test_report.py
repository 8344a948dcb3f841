"""The main job end to end on a tiny llama: run folder, metrics.json, report.md, plots, and numbers
recomputed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from plans import TINY_FALLBACK
from tiny_models import tiny_text_model

from steerpeft.errors import ConfigError
from steerpeft.evaluation import is_refusal
from steerpeft.plan import Plan
from steerpeft.recipes import load_recipe
from steerpeft.report import plot_gate, plot_layers, plot_refusal, plot_trade, render_report, text_table
from steerpeft.report.metrics import selection_reason
from steerpeft.report.terminal import summary_table
from steerpeft.run import check_run_dir, run_recipe

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OVERRIDES = ["data.limit=12", "eval.max_new_tokens=3", TINY_FALLBACK]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here runs single-threaded (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return tiny_text_model("llama", num_layers=4)


@pytest.fixture(scope="module")
def run(tiny: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    model, tokenizer = tiny
    out = tmp_path_factory.mktemp("report") / "run"
    return run_recipe(
        "mars", out_dir=out, model=model, processor=tokenizer, progress=False, overrides=OVERRIDES,
        command="steerpeft run mars data.limit=12",
    )


@pytest.fixture(scope="module")
def metrics(run: Any) -> dict[str, Any]:
    return json.loads((run.out_dir / "metrics.json").read_text(encoding="utf-8"))


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 2000


# ---------------------------------------------------------------------------
# The run folder


def test_run_folder_holds_every_product(run: Any) -> None:
    out = run.out_dir
    for name in (
        "metrics.json", "report.md", "recipe.yaml", "metrics.jsonl", "plan/plan.json",
        "plan/plan.safetensors",
    ):
        assert (out / name).is_file(), name
    for name in ("layers.png", "gate.png", "refusal.png"):
        assert _is_png(out / name), name
        assert run.files[name.removesuffix(".png")] == out / name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left behind
    events = [json.loads(line)["event"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events[0] == "fit_start" and events[-1] == "fit_end" and "layer_scored" in events


def test_metrics_record_the_plan_the_evaluation_and_provenance(run: Any, metrics: dict[str, Any]) -> None:
    plan = Plan.load(run.out_dir / "plan")
    step = plan.steps[0]
    assert metrics["format"] == "steerpeft-run/1"
    assert metrics["plan"]["chosen_layer"] == step.layers[0]
    assert metrics["plan"]["tau"] == pytest.approx(step.scaler.tau)
    assert metrics["plan"]["reason"]
    table = metrics["plan"]["steps"][0]["layer_scores"]
    assert [row["layer"] for row in table] == [1, 2]  # [0.2 L, 0.8 L) of 4 layers
    assert sum(row["chosen"] for row in table) == 1
    evaluation = metrics["eval"]
    assert evaluation["conditions"] == [
        "unsteered", "mars", "mars (no re-centering)", "mars (fixed strength)", "mars (all tokens)",
    ]
    assert evaluation["sets"] == ["harmful/text", "harmless/text"]  # a text model: text only
    assert metrics["gate"]["tau"] == pytest.approx(step.scaler.tau)
    assert set(metrics["gate"]["sets"]) == {"harmful/text", "harmless/text"}
    assert metrics["gate"]["sets"]["harmful/text"]["raw"] is None  # no offset to remove for text
    assert {"python", "torch", "transformers", "steerpeft"} <= set(metrics["versions"])
    assert metrics["command"] == "steerpeft run mars data.limit=12"
    assert {"fit_s", "eval_s", "report_s", "total_s"} <= set(metrics["timings"])
    assert metrics["adapter"]["status"] in ("exported", "unavailable")


def test_eval_prompts_are_the_test_split_no_fit_decision_saw(metrics: dict[str, Any]) -> None:
    recipe = load_recipe("mars", OVERRIDES)
    split = recipe.split_prompts()
    assert metrics["eval"]["prompts"]["harmful"] == split["positive_test"]
    assert metrics["eval"]["prompts"]["harmless"] == split["negative_test"]
    assert not set(split["positive_test"]) & (set(split["positive"]) | set(split["positive_validation"]))
    assert metrics["eval"]["prompts"]["source"].startswith("the test split")
    counts = metrics["plan"]["steps"][0]["prompts"]
    assert counts["positive_validation"] == len(split["positive_validation"]) > 0
    # data.limit
    assert counts["positive"] + counts["positive_validation"] + len(split["positive_test"]) == 12


# ---------------------------------------------------------------------------
# Numbers recomputed from the saved plan and data


def _decision_states(model: Any, tokenizer: Any, prompts: list[str], layer: int) -> torch.Tensor:
    """Residual stream after decoder layer `layer` at each prompt's last token, one prompt at a time."""
    states = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.no_grad():
            output = model(**ids, output_hidden_states=True)
        states.append(output.hidden_states[layer + 1][0, -1].float())
    return torch.stack(states)


def _auroc(positive: list[float], negative: list[float]) -> float:
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positive for n in negative)
    return wins / (len(positive) * len(negative))


def test_gate_values_and_separation_recomputed_from_the_saved_plan(tiny: tuple[Any, Any], run: Any,
                                                                   metrics: dict[str, Any]) -> None:
    model, tokenizer = tiny
    plan = Plan.load(run.out_dir / "plan")
    layer = metrics["plan"]["chosen_layer"]
    region = plan.steps[0].scaler.regions[layer]
    recomputed = {}
    for label in ("harmful", "harmless"):
        states = _decision_states(model, tokenizer, metrics["eval"]["prompts"][label], layer)
        t = (states @ region.unit.float() - region.p_minus) / (region.p_plus - region.p_minus)
        saved = metrics["gate"]["sets"][f"{label}/text"]["recentered"]
        assert t.tolist() == pytest.approx(saved["values"], abs=1e-3)
        assert saved["mean"] == pytest.approx(float(t.mean()), abs=1e-3)
        assert saved["above_tau"] == pytest.approx(float((t > metrics["gate"]["tau"]).double().mean()))
        recomputed[label] = t.tolist()
    # the layer table's separation is measured on the validation split (the prompts that chose the layer)
    split = load_recipe("mars", OVERRIDES).split_prompts()
    validation = {
        label: (
            _decision_states(model, tokenizer, split[f"{kind}_validation"], layer) @ region.unit.float()
            - region.p_minus
        )
        / (region.p_plus - region.p_minus)
        for label, kind in (("harmful", "positive"), ("harmless", "negative"))
    }
    row = next(r for r in metrics["plan"]["steps"][0]["layer_scores"] if r["layer"] == layer)
    assert row["separation"] == pytest.approx(
        _auroc(validation["harmful"].tolist(), validation["harmless"].tolist())
    )


def test_refusal_rates_are_the_mean_of_the_saved_per_prompt_verdicts(metrics: dict[str, Any]) -> None:
    per_prompt = metrics["eval"]["per_prompt"]
    for row in metrics["eval"]["table"]:
        saved = per_prompt[row["condition"]][row["set"]]
        assert saved["refusals"] == [is_refusal(text) for text in saved["texts"]]
        assert row["refusal_rate"] == pytest.approx(sum(saved["refusals"]) / len(saved["refusals"]))
        assert row["first_token_score"] == pytest.approx(sum(saved["scores"]) / len(saved["scores"]))
        assert row["n"] == len(saved["texts"]) == len(metrics["eval"]["prompts"][row["set"].split("/")[0]])


# ---------------------------------------------------------------------------
# The report


def test_report_shows_the_choice_the_results_and_how_to_load(metrics: dict[str, Any], run: Any) -> None:
    report = (run.out_dir / "report.md").read_text(encoding="utf-8")
    layer = metrics["plan"]["chosen_layer"]
    for text in (
        "# steerpeft run: mars", "## What was fitted", "## Chosen layer and why", f"**Layer {layer}**",
        "![Per-layer scores](layers.png)", "![Refusal rates](refusal.png)", "![Gate values](gate.png)",
        "refusal on harmful (higher = safer)", "over-refusal on harmless (lower = better)",
        "KL on harmless (nats)", "mars (no re-centering)", "mars (fixed strength)", "mars (all tokens)",
        "## Using the result", 'Plan.load("plan")', f"tau = {metrics['plan']['tau']:.3f}",
        "steerpeft run mars data.limit=12",
    ):
        assert text in report, text
    if metrics["adapter"]["status"] == "exported":
        assert 'load_adapter(model, "adapter")' in report
    # the report is a pure rendering of metrics.json
    assert render_report(metrics) == report


def test_summary_table_has_the_headline_numbers(run: Any, metrics: dict[str, Any]) -> None:
    text = run.summary()
    assert text == summary_table(metrics, str(run.out_dir))
    layer = metrics["plan"]["chosen_layer"]
    assert f"chosen layer  {layer} of 4" in text and "tau" in text and str(run.out_dir) in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if "refusal before" in line)
    assert lines[header + 1].strip().startswith("---")
    rows = lines[header + 2 : header + 4]
    assert [r.split()[0] for r in rows] == ["harmful/text", "harmless/text"]
    assert len({len(r) for r in rows}) == 1  # aligned columns


def test_a_run_folder_can_be_rewritten_but_foreign_folders_are_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds other files"):
        check_run_dir(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_run_dir(tmp_path / "file")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "metrics.json").write_text("{}")
    assert check_run_dir(earlier) == earlier


def test_run_without_plots_or_export_and_into_the_same_folder(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = tiny
    out = tmp_path / "run"
    first = run_recipe("mars", out_dir=out, model=model, processor=tokenizer, progress=False,
                       overrides=[*OVERRIDES, "eval.generate=false", "eval.ablations=false"])
    assert (out / "refusal.png").is_file()
    second = run_recipe("mars", out_dir=out, model=model, processor=tokenizer, progress=False, plots=False,
                        export=False, overrides=[*OVERRIDES, "eval.generate=false", "eval.ablations=false"])
    assert not (out / "refusal.png").exists() and not (out / "adapter").exists()
    assert second.metrics["adapter"]["status"] == "skipped"
    assert second.metrics["eval"]["table"][1]["refusal_rate"] is None  # generation off
    assert first.metrics["plan"]["chosen_layer"] == second.metrics["plan"]["chosen_layer"]
    assert "first-token score before" in second.summary()


# ---------------------------------------------------------------------------
# Plots and tables on their own


def test_plots_for_sweeps_first_token_scores_and_media(tmp_path: Path) -> None:
    sweep = [{"layer": i, "separation": 0.5 + 0.05 * i, "accuracy": 0.5 + 0.04 * i, "chosen": i == 5}
             for i in range(2, 8)]
    assert _is_png(plot_layers(sweep, 5, tmp_path / "sweep.png"))
    evaluation = {
        "conditions": ["unsteered", "actadd"], "sets": ["harmful/text", "harmless/text"], "generate": False,
        "table": [
            {"condition": c, "set": s, "n": 4, "refusal_rate": None, "first_token_score": v, "kl": None}
            for c, v in (("unsteered", -3.0), ("actadd", 1.5)) for s in ("harmful/text", "harmless/text")
        ],
    }
    assert _is_png(plot_refusal(evaluation, tmp_path / "scores.png"))
    summary = {"values": [0.1, 0.4, 0.9]}
    gate = {
        "layer": 9, "tau": 0.3,
        "sets": {
            "harmful/text": {"recentered": {"values": [0.8, 1.2, 0.95]}, "raw": None},
            "harmless/image": {"recentered": summary, "raw": {"values": [1.4, 1.6, 1.5]}},
        },
    }
    assert _is_png(plot_gate(gate, tmp_path / "gate.png"))


def test_text_table_aligns_numbers_right_and_text_left() -> None:
    table = text_table(["set", "rate"], [["harmful/text", "5.0%"], ["x", "100.0%"]])
    lines = table.splitlines()
    assert lines[0] == "set             rate"
    assert lines[1] == "------------  ------"
    assert lines[2] == "harmful/text    5.0%"
    assert lines[3] == "x             100.0%"


def test_an_exported_adapter_evaluates_like_its_plan(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    pytest.importorskip("steerpeft.adapters", reason="needs steerpeft.adapters")
    from steerpeft.run import evaluate_saved

    model, tokenizer = tiny
    overrides = ["data.limit=12", "eval.generate=false", "steps.0.scaler.alpha=4.0"]
    run = run_recipe("actadd", out_dir=tmp_path / "run", model=model, processor=tokenizer, progress=False,
                     plots=False, overrides=overrides)
    if run.adapter_dir is None:
        pytest.skip(f"the adapter was not exported: {run.metrics['adapter']}")
    evaluated = evaluate_saved(run.adapter_dir, out_dir=tmp_path / "eval", model=model, processor=tokenizer,
                               recipe=load_recipe("actadd", overrides), progress=False, plots=False)
    assert evaluated.metrics["eval"]["prompts"] == run.metrics["eval"]["prompts"]
    plan_rows = {r["set"]: r for r in run.metrics["eval"]["table"] if r["condition"] == "actadd"}
    adapter_rows = {r["set"]: r for r in evaluated.metrics["eval"]["table"] if r["condition"] == "adapter"}
    for name, row in plan_rows.items():
        assert row["kl"] > 0  # the plan does steer
        # The LoRA export sums in another order than the hooks: on a KL of ~5e-5 that is ~3e-7 of float32
        # noise.
        assert adapter_rows[name]["kl"] == pytest.approx(row["kl"], rel=1e-3, abs=1e-6)
        assert adapter_rows[name]["first_token_score"] == pytest.approx(row["first_token_score"], abs=1e-4)
    # the adapter came off again: the unsteered rows match the run's
    unsteered = {
        r["set"]: r["first_token_score"] for r in run.metrics["eval"]["table"]
        if r["condition"] == "unsteered"
    }
    after = {
        r["set"]: r["first_token_score"] for r in evaluated.metrics["eval"]["table"]
        if r["condition"] == "unsteered"
    }
    assert after == pytest.approx(unsteered, abs=1e-5)


def test_preflight_comes_first_and_matches_the_unsteered_evaluation(
    run: Any, metrics: dict[str, Any]
) -> None:
    profile = metrics["preflight"]
    assert (
        profile["harmful_n"] == len(metrics["eval"]["prompts"]["harmful"]) and profile["harmful_judged"] > 0
    )
    unsteered = {row["set"]: row for row in metrics["eval"]["table"] if row["condition"] == "unsteered"}
    # the same prompts, the same unsteered model: the same mean first-token log-odds (other batching only)
    assert profile["harmful_log_odds"] == pytest.approx(
        unsteered["harmful/text"]["first_token_score"], abs=1e-3
    )
    assert profile["harmless_log_odds"] == pytest.approx(
        unsteered["harmless/text"]["first_token_score"], abs=1e-3
    )
    report = (run.out_dir / "report.md").read_text(encoding="utf-8")
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Your model before steering"
    # a random tiny model never refuses
    assert profile["barely_refuses"] and "little refusal to carry" in report
    assert "your model" in summary_table(metrics)


def test_the_reason_names_the_refusal_score_when_the_selector_ranked_by_it() -> None:
    inside = {"refusal_unsteered": 0.30, "within_limits": True}
    rows = [{"layer": 3, "separation": 0.9, "refusal": 0.40, **inside},
            {"layer": 5, "separation": 0.8, "refusal": 0.60, **inside},
            {"layer": 7, "separation": 0.95, "refusal": None, "within_limits": False, "excluded_by": ["tau"]}]
    by_refusal = {"selector": {"name": "mars", "params": {"score": "refusal"}}, "layer_scores": rows}
    reason = selection_reason(by_refusal, 5)
    assert "refuse the most validation harmful prompts" in reason and "(60%, against 30% unsteered)" in reason
    assert "2 of 3 candidate layers" in reason and "tied" not in reason
    by_separation = {"selector": {"name": "mars", "params": {"score": "separation"}}, "layer_scores": rows}
    assert selection_reason(by_separation, 3).startswith("Layer 3 has the highest separation (AUROC 0.900)")


def test_an_ablation_run_plots_its_refusal_kl_trade(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    """The bypass selector's table is a trade between refusal removed and harmless answers changed: the run
    draws it (trade.png, linked from the report) with the KL limit the selector applied."""
    model, tokenizer = tiny
    out = tmp_path / "run"
    result = run_recipe("ablation", out_dir=out, model=model, processor=tokenizer, progress=False,
                        overrides=["data.limit=12", "eval.generate=false", "eval.ablations=false",
                                   "steps.0.selector.max_kl=0.05", "steps.0.selector.candidates=[1, 2, 3]"])
    assert result.metrics["plan"]["limits"] == {"kl": 0.05, "induce": 0.0}
    assert _is_png(out / "trade.png") and result.files["trade"] == out / "trade.png"
    assert "![Refusal removed against harmless answers changed](trade.png)" in (out / "report.md").read_text()
    mars_run = run_recipe("mars", out_dir=out, model=model, processor=tokenizer, progress=False,
                          overrides=[*OVERRIDES, "eval.generate=false", "eval.ablations=false"])
    assert "trade" not in mars_run.files and not (out / "trade.png").exists()  # a stale trade plot is removed


def test_plot_trade_refuses_a_table_without_bypass_and_kl(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'bypass' and 'kl'"):
        plot_trade([{"layer": 1, "separation": 0.9}], 1, tmp_path / "trade.png")


def test_the_bypass_reason_says_what_a_looser_kl_limit_would_buy() -> None:
    rows = [{"layer": 2, "bypass": -1.0, "kl": 0.05, "within_limits": True},
            {"layer": 4, "bypass": -3.0, "kl": 0.40, "within_limits": False},
            {"layer": 5, "bypass": -2.0, "kl": 0.02, "within_limits": False},  # excluded by induce, not KL
            {"layer": 6, "bypass": -0.5, "kl": 0.30, "within_limits": False}]
    meta = {"selector": {"name": "bypass", "params": {"max_kl": 0.1}}, "layer_scores": rows}
    reason = selection_reason(meta, 2)
    assert "1 direction(s) that remove more refusal exceed the KL limit (the cheapest: KL 0.4)" in reason
    rows[1]["kl"] = 0.08  # nothing stronger is held back by KL: no trade to offer
    assert "exceed the KL limit" not in selection_reason(meta, 2)
