"""heretic-llm 1.4.0 as a benchmark-only peer of the `ablation` recipe: run it, then judge its model like
ours.

heretic is AGPL: it is never a steerpeft dependency and never imported here.  It runs as a separate
program from its own virtual environment; this script only writes its prompt files, drives its
interactive menus through a pipe, and then evaluates the folder it saved with steerpeft's judge.

    python -m venv /tmp/heretic-venv && /tmp/heretic-venv/bin/pip install "torch==2.14.1" heretic-llm==1.4.0
    python benchmarks/peer_heretic.py run        # heretic on the converted Qwen folder, capped at 20 min
    python benchmarks/peer_heretic.py evaluate   # refusal + first-token KL on the validation prompts

heretic gets the same data as our fits: the built-in prompts minus the test split; it computes its
directions on the training split and optimises (refusals and KL) on the validation split, like our
selector.  The held-out sets it is judged on are those of `validate_mars.py`
(results/validation/qwen-text/prompts.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "validation"
OUT = RESULTS / "heretic.json"
TRIAL = re.compile(r"\[(\d+)\] \[Trial\s+(\d+)\] Refusals:\s*(\d+)/(\d+), KL divergence: ([0-9.]+)")
OPTION = re.compile(r"^\[(\d+)\] (.+)$", re.MULTILINE)
KL_LIMIT = 0.2
"""The issue's KL bound for refusal removal: among heretic's Pareto trials, the fewest refusals within it."""


def qwen_folder() -> Path:
    found = sorted(Path.home().glob(".cache/steerpeft/gguf-qwen2.5-coder-0.5b-instruct-*/config.json"))
    if not found:
        raise SystemExit(
            "No converted Qwen folder in ~/.cache/steerpeft: run validate_mars.py (or load_model on the "
            "gguf) first."
        )
    return found[-1].parent


def write_prompts(work: Path) -> dict[str, Path]:
    """The built-in fit prompts as heretic's plain-text datasets (one prompt per line)."""
    from steerpeft.recipes import load_recipe

    splits = load_recipe("mars").split_prompts()
    files = {"bad": "positive", "good": "negative", "bad-evaluation": "positive_validation",
             "good-evaluation": "negative_validation"}
    work.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, key in files.items():
        paths[name] = work / f"{name}.txt"
        paths[name].write_text("\n".join(p.replace("\n", " ") for p in splits[key]) + "\n")
    return paths


def choose(menu: str, saved: bool) -> str:
    """The answer to one of heretic's numbered menus."""
    options = {text.strip(): number for number, text in OPTION.findall(menu)}

    def pick(prefix: str) -> str:
        return next(n for text, n in options.items() if text.startswith(prefix))

    if "How would you like to proceed?" in menu:
        return pick("Ignore the previous run")
    if "How do you want to export" in menu:
        return pick("Merge")
    if "What do you want to do with the decensored model?" in menu:
        return pick("Save the model") if not saved else pick("Return to the trial")
    if "Which trial do you want to use?" in menu:
        if saved:
            return pick("Exit program")
        trials = [(int(r), float(kl), n) for n, _, r, _, kl in TRIAL.findall(menu)]
        within = [t for t in trials if t[1] <= KL_LIMIT] or sorted(trials, key=lambda t: t[1])[:1]
        return min(within)[2]
    raise RuntimeError(f"unexpected heretic menu:\n{menu[-800:]}")


def drive(
    command: list[str], env: dict[str, str], save_to: Path, timeout: float, log: Path
) -> dict[str, Any]:
    """Run heretic, answer its menus (notebook mode reads numbers from stdin), stop once the model is
    saved."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    assert process.stdin is not None and process.stdout is not None
    text, menu_start, chosen, stopped_by = "", 0, None, None
    with log.open("w") as sink:
        while True:
            if time.perf_counter() - start > timeout:
                stopped_by = f"wall-clock cap of {timeout:.0f} s reached"
                process.kill()
                break
            ready, _, _ = select.select([process.stdout], [], [], 5.0)
            if not ready:
                continue
            chunk = os.read(process.stdout.fileno(), 65536).decode(errors="replace")
            if not chunk:
                break
            sink.write(chunk)
            sink.flush()
            text += chunk
            menu = text[menu_start:]  # everything since the last answer: one menu at most
            last = menu.rstrip().rsplit("\n", 1)[-1]
            if last.endswith("Enter number:") or ("Path to the folder" in last and last.endswith(":")):
                menu_start = len(text)
                saved = (save_to / "config.json").exists()
                if "Path to the folder" in last:
                    answer = str(save_to)
                else:
                    answer = choose(menu, saved)
                    match = re.search(rf"\[{answer}\] (\[Trial[^\n]*)", menu)
                    chosen = match.group(1).strip() if match and chosen is None else chosen
                process.stdin.write((answer + "\n").encode())
                process.stdin.flush()
    code = process.wait()
    trials = list({int(t): {"trial": int(t), "refusals": int(r), "of": int(n), "kl": float(kl)}
                   for _, t, r, n, kl in TRIAL.findall(text)}.values())
    return {"returncode": code, "wall_s": time.perf_counter() - start, "stopped_by": stopped_by,
            "saved": (save_to / "config.json").exists(), "chosen": chosen, "pareto_trials": trials,
            "tail": text[-3000:]}


def run(args: argparse.Namespace) -> None:
    heretic = args.venv / "bin" / "heretic"
    record: dict[str, Any] = {"peer": "heretic-llm 1.4.0 (AGPL, benchmark-only, separate venv)"}
    if not heretic.exists():
        record.update(
            summary="heretic is not installed here.",
            stopped_by=f"{heretic} missing: "
            f'python -m venv {args.venv} && {args.venv}/bin/pip install "torch==2.14.1" heretic-llm==1.4.0',
        )
        write(record)
        return
    files = write_prompts(args.work / "prompts")
    model_dir = args.work / "model"
    command = [str(heretic), "--model", str(qwen_folder()), "--n-trials", str(args.trials),
               "--n-startup-trials", str(args.startup), "--seed", "0", "--batch-size", "16",
               "--max-response-length", str(args.max_response_length), "--export-strategy", "MERGE",
               "--study-checkpoint-dir", str(args.work / "checkpoints"), "--dtypes", '["float32"]',
               "--device-map", "cpu"]
    for name, path in files.items():
        command += [f"--{name}-prompts.dataset", str(path)]
    env = {**os.environ, "KAGGLE_KERNEL_RUN_TYPE": "batch", "HF_HUB_OFFLINE": "1", "COLUMNS": "200",
           "TERM": "dumb", "NO_COLOR": "1"}
    print(" ".join(command), file=sys.stderr)
    outcome = drive(command, env, model_dir, args.timeout, args.work / "heretic.log")
    record.update(
        command=" ".join(command).replace(str(Path.home()), "~"),
        cap_s=args.timeout,
        trials=args.trials,
        startup_trials=args.startup,
        **outcome,
    )
    if outcome["saved"]:
        record["summary"] = (
            f"heretic ran {args.trials} trials ({args.startup} random start-up trials) and saved the "
            f"merged model of the kept trial in {outcome['wall_s']:.0f} s of wall time."
        )
    else:
        record["summary"] = (f"heretic did not produce a model within {outcome['wall_s']:.0f} s "
                             f"(exit code {outcome['returncode']}).")
        record["stopped_by"] = record.get("stopped_by") or outcome["tail"].strip().splitlines()[-1][:300]
    write(record)


def evaluate(args: argparse.Namespace) -> None:
    """heretic's saved model on validate_mars.py's held-out text prompts: our judge, KL vs the unsteered
    model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steerpeft.evaluation.judge import is_refusal
    from steerpeft.evaluation.kl import first_token_kl
    from steerpeft.evaluation.runs import decision_logits, generate_texts
    from steerpeft.inputs.text import batched, encode_prompts

    record = json.loads(OUT.read_text())
    model_dir = args.work / "model"
    if not (model_dir / "config.json").exists():
        raise SystemExit(
            f"{model_dir} holds no model: heretic did not save one ({record.get('stopped_by')})."
        )
    prompts = json.loads((RESULTS / "qwen-text" / "prompts.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(qwen_folder())
    base = AutoModelForCausalLM.from_pretrained(qwen_folder(), dtype=torch.float32).eval()
    peer = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    start, result = time.perf_counter(), {}
    for label in ("harmful", "harmless"):
        batches = [encode_prompts(tokenizer, chunk) for chunk in batched(prompts[label], 16)]
        kl = torch.cat([first_token_kl(decision_logits(base, b), decision_logits(peer, b)) for b in batches])
        texts = [t for b in batches for t in generate_texts(peer, tokenizer, b, args.max_new_tokens)]
        refusals = [is_refusal(t) for t in texts]
        result[f"{label}/text"] = {"n": len(texts), "k": sum(refusals), "rate": sum(refusals) / len(texts),
                                   "kl": float(kl.mean()), "texts": texts}
        print(
            f"heretic {label}: {sum(refusals)}/{len(texts)} refused, KL {float(kl.mean()):.4f}",
            file=sys.stderr,
        )
    # The same loading and generation path on the unsteered folder must reproduce validate_mars.py's answers.
    cached = json.loads((RESULTS / "qwen-text" / "eval-mars.json").read_text())["rows"]["unsteered"][
        "harmful/text"
    ]
    first = encode_prompts(tokenizer, prompts["harmful"][:16])
    record["path_check"] = {
        "prompts": 16,
        "same_answers_as_validation_unsteered": sum(
            a == b
            for a, b in zip(generate_texts(base, tokenizer, first, args.max_new_tokens), cached["texts"][:16])
        ),
    }
    record["eval"] = result
    record["eval_s"] = time.perf_counter() - start
    write(record)


def write(record: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["run", "evaluate", "all"], nargs="?", default="all")
    parser.add_argument("--venv", type=Path, default=Path("/tmp/heretic-venv"))
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/steerpeft-heretic"),
        help="prompt files, heretic's checkpoints and the saved model (about 2 GB; not in the repo)",
    )
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--startup", type=int, default=6)
    parser.add_argument("--max-response-length", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=1200.0, help="wall-clock cap for heretic, seconds")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    if args.step in ("run", "all"):
        run(args)
    if args.step in ("evaluate", "all") and (args.work / "model" / "config.json").exists():
        evaluate(args)


if __name__ == "__main__":
    main()
