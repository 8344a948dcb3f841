"""The `steerpeft` command line: help, overrides, errors, info, eval/export of saved plans, and the real main
job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from plans import TINY_FALLBACK
from tiny_models import tiny_text_model

from steerpeft.cli import build_parser, main
from steerpeft.errors import ConfigError
from steerpeft.recipes import load_recipe
from steerpeft.run import run_recipe

SUBCOMMANDS = ["run", "fit", "eval", "export", "info", "recipes"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here runs single-threaded (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A MARS run on a tiny llama (saved to disk, so the CLI can load it by path): (run folder, model
    folder)."""
    model, tokenizer = tiny_text_model("llama", num_layers=4)
    model_dir = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    from steerpeft.models import load_model

    model, tokenizer = load_model(str(model_dir), device="cpu")  # the id the plan records is this folder
    run_dir = tmp_path_factory.mktemp("cli-run") / "run"
    run_recipe("mars", out_dir=run_dir, model=model, processor=tokenizer, progress=False,
               overrides=["data.limit=12", "eval.max_new_tokens=2", TINY_FALLBACK], command="pytest")
    return run_dir, model_dir


# ---------------------------------------------------------------------------
# Help and parsing


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_help_exits_zero_and_shows_examples(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--help"] if command is None else [command, "--help"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    assert "steerpeft" in out
    if command in ("run", "fit", "eval"):
        assert "steps.0.selector.limits.kl=0.2" in out  # how to override list items


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_overrides_may_follow_options_and_replace_the_recipe_position() -> None:
    from steerpeft.cli import _split_arguments

    parser = build_parser()
    args, extras = parser.parse_known_args(
        ["run", "data.limit=3", "--out", "x", "eval.generate=false", "--quiet"]
    )
    _split_arguments(args, extras, parser)
    assert args.recipe is None  # the default recipe (mars)
    assert args.overrides == ["data.limit=3", "eval.generate=false"]
    assert args.out == "x" and args.quiet


def test_stray_argument_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "mars", "--out", "x", "notakeyvalue"]) == 2
    assert "key.path=value" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Errors


def test_unknown_override_key_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", "mars", "data.limt=12", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "Did you mean 'limit'?" in err
    assert "Traceback" not in err
    assert not out.exists()  # refused before anything was loaded or written


def test_unknown_component_option_fails_before_the_model_loads(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "mars", "steps.0.selector.limits.kll=0.2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Did you mean 'kl'?" in err and "Traceback" not in err


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "mars", "data.limt=12", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "error: " in err


def test_missing_path_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and "Traceback" not in err


def test_a_folder_that_is_neither_plan_nor_adapter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(tmp_path)]) == 2
    assert "neither a steerpeft plan" in capsys.readouterr().err


def test_recipes_lists_the_builtin_recipes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in ("mars", "actadd", "ablation", "cast"):
        assert name in out


# ---------------------------------------------------------------------------
# Overrides


def test_overrides_reach_list_items_by_index() -> None:
    recipe = load_recipe(
        "mars",
        [
            "steps.0.selector.limits.kl=0.2", "steps[0].scaler.recenter=shift", "fit.seed=1",
            "model.dtype=bfloat16", "model.name=null", "eval.generate=false",
        ],
    )
    step = recipe.config["steps"][0]
    assert step["selector"]["limits"]["kl"] == 0.2
    assert step["selector"]["limits"]["false_trigger"] == 0.05  # siblings kept
    assert step["scaler"]["recenter"] == "shift"
    assert recipe.config["fit"]["seed"] == 1 and recipe.config["model"]["dtype"] == "bfloat16"
    assert recipe.config["model"]["name"] is None and recipe.config["eval"]["generate"] is False


@pytest.mark.parametrize(("override", "message"), [
    ("steps.1.name=x", "list of 1 item"),
    ("fit.seed.x=1", "not a mapping"),
    ("steps.0.selectr=sweep", "Did you mean 'selector'?"),
    ("=3", "key.path=value"),
])
def test_impossible_overrides_are_explained(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("(", r"\(")):
        load_recipe("mars", [override])


# ---------------------------------------------------------------------------
# Saved plans: info, eval, export


def test_info_describes_a_saved_plan(tiny_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, model_dir = tiny_run
    assert main(["info", str(run_dir / "plan")]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    chosen = metrics["plan"]["chosen_layer"]
    assert str(model_dir) in out  # the base model
    for text in ("layers", "positions    decision", "scaler       trust_region", "tau", "per-layer scores",
                 "<- chosen", f"chosen layer {chosen}"):
        assert text in out, text


def test_info_on_a_run_folder_adds_the_results(
    tiny_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = tiny_run
    assert main(["info", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "results (metrics.json)" in out and "harmless/text" in out and "refusal before" in out


def test_eval_of_a_saved_plan_from_the_cli(tiny_run: tuple[Path, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _model_dir = tiny_run
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval", str(run_dir / "plan"), "eval.max_new_tokens=2", "eval.ablations=false",
                "--out", str(out), "--quiet", "--no-plots",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    original = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["eval"]["conditions"] == ["unsteered", "mars"]
    # the same plan, model and prompts: the same numbers as the run
    assert metrics["eval"]["prompts"] == original["eval"]["prompts"]
    before = {(r["condition"], r["set"]): r for r in original["eval"]["table"]}
    for row in metrics["eval"]["table"]:
        assert row["first_token_score"] == pytest.approx(
            before[(row["condition"], row["set"])]["first_token_score"], abs=1e-4
        )
    assert str(out) in printed and not (out / "gate.png").exists()


def test_export_writes_an_adapter_or_explains_why_not(tiny_run: tuple[Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _ = tiny_run
    out = tmp_path / "adapter"
    code = main(["export", str(run_dir), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    try:
        from steerpeft.adapters import export_adapter  # noqa: F401
    except ImportError:
        assert code == 2 and captured.err.startswith("error: ") and "Traceback" not in captured.err
        return
    assert code == 0, captured.err
    assert (out / "adapter_config.json").is_file()
    assert "load_adapter" in captured.out
    assert main(["info", str(out)]) == 0
    described = capsys.readouterr().out
    assert f"adapter: {out}" in described and "kind" in described and "README.md" in described


def test_fit_from_the_cli_saves_a_plan_and_prints_the_layer_table(
    tiny_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, model_dir = tiny_run
    out = tmp_path / "plan"
    assert (
        main(
            [
                "fit", "mars", f"model.name={model_dir}", "data.limit=12", TINY_FALLBACK, "--out", str(out),
                "--quiet", "--device", "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert (out / "plan.json").is_file() and (out / "plan.safetensors").is_file()
    assert "per-layer scores" in printed and "<- chosen" in printed and f"saved the plan to {out}" in printed


def test_fit_needs_a_recipe_before_the_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "data.limit=3"]) == 2
    assert "fit needs a RECIPE" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# The real main job


@pytest.mark.slow
def test_steerpeft_run_on_the_embedded_smollm2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["run", "mars", "data.limit=24", "eval.max_new_tokens=8", "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    for name in ("metrics.json", "report.md", "layers.png", "gate.png", "refusal.png", "recipe.yaml",
                 "metrics.jsonl", "plan/plan.json", "plan/plan.safetensors"):
        assert (out / name).is_file(), name
    with open(out / "layers.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["id"].startswith("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert metrics["model"]["num_layers"] == 30
    layer = metrics["plan"]["chosen_layer"]
    assert 6 <= layer < 24  # the candidate range [0.2 L, 0.8 L)
    assert metrics["plan"]["tau"] is not None
    assert [r["set"] for r in metrics["eval"]["table"][:2]] == ["harmful/text", "harmless/text"]
    held_out = load_recipe("mars", ["data.limit=24"]).split_prompts()["positive_test"]
    assert (
        metrics["eval"]["table"][0]["n"] == len(held_out)
        and metrics["eval"]["prompts"]["harmful"] == held_out
    )
    assert f"chosen layer  {layer} of 30" in printed and str(out) in printed
    if metrics["adapter"]["status"] == "exported":
        assert (out / "adapter" / "adapter_config.json").is_file()
