"""Extraction throughput: prompts/s of fitting a direction vs a plain forward pass.

Rows (the same positive + negative prompts, the same batches):

- `plain_forward`: `model(**batch, use_cache=False)` over every batch: the full model, logits
  included, no hooks.  The baseline.
- `record_full`: steerpeft's `ActivationRecorder` at one middle layer, decision position,
  `stop_early=False` (the whole model still runs), then `DiffMeans`.
- `record_early`: the same with `stop_early=True` (the forward stops after the recorded layer).
- `plain_forward_text` / `steerer_fit`: the end-to-end versions from prompt strings
  (tokenisation included): a plain forward vs `Steerer(selector=FixedLayers(layer)).fit(...)`,
  which records with early stopping, extracts, selects and builds the plan.

Every steerpeft row's direction is compared with a reference difference of means computed from
plain forward hooks (max abs diff relative to its norm), and the early-stopping row is checked
to leave the last decoder layer unrun, so the benchmark cannot silently time nothing.

    python benchmarks/bench_extract.py --model 1b --batch-sizes 32 --prompts 256 --out extract-1b.json
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B

from steerpeft.architectures import decoder_layers
from steerpeft.extractors import DiffMeans
from steerpeft.positions import DecisionPosition
from steerpeft.recording import ActivationRecorder
from steerpeft.selectors import FixedLayers
from steerpeft.steerer import Steerer

TARGETS = {"record_full": (">=", 1.0), "record_early": (">", 1.0), "steerer_fit": (">=", 1.0)}
BASELINES = {
    "record_full": "plain_forward", "record_early": "plain_forward", "steerer_fit": "plain_forward_text",
}


def batches_of(loaded: B.Loaded, texts: Sequence[str], batch_size: int) -> list[dict[str, torch.Tensor]]:
    return [B.encode(loaded, texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]


def recorder_direction(loaded: B.Loaded, layer: int, positive: list[dict[str, torch.Tensor]],
                       negative: list[dict[str, torch.Tensor]], stop_early: bool) -> torch.Tensor:
    """Record both sets at `layer`'s decision position and take the difference of means."""
    acts = []
    for batches in (positive, negative):
        recorder = ActivationRecorder(loaded.model, loaded.layout, [layer], DecisionPosition(),
                                      keep_per_prompt=False, stop_early=stop_early)
        acts.append(recorder.record(batches))
    return DiffMeans().fit(acts[0], acts[1]).vectors[layer]


def steerer_direction(loaded: B.Loaded, layer: int, positive: list[str], negative: list[str],
                      batch_size: int) -> torch.Tensor:
    steerer = Steerer(selector=FixedLayers(layer), validation_fraction=0.0, batch_size=batch_size)
    plan = steerer.fit(loaded.model, loaded.tokenizer, positive, negative)
    return plan.steps[0].directions[layer]


def plain_forward(loaded: B.Loaded, batches: list[dict[str, torch.Tensor]]) -> None:
    for batch in batches:
        loaded.model(**batch, use_cache=False)


def plain_forward_text(loaded: B.Loaded, prompts: list[str], batch_size: int) -> None:
    """From prompt strings, as Steerer.fit starts: chat template, tokenise, forward."""
    for i in range(0, len(prompts), batch_size):
        loaded.model(**B.encode(loaded, B.rendered(loaded, prompts[i:i + batch_size])), use_cache=False)


@torch.no_grad()
def reference_direction(loaded: B.Loaded, layer: int, positive: list[dict[str, torch.Tensor]],
                        negative: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """mean(last-token state | positive) - mean(... | negative), from a plain forward hook (float32)."""
    return last_token_mean(loaded, layer, positive) - last_token_mean(loaded, layer, negative)


def last_token_mean(loaded: B.Loaded, layer: int, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Mean of `layer`'s output at each row's last column (left padding: its last real token)."""
    states: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        states.append((output[0] if isinstance(output, tuple) else output)[:, -1, :].float().cpu())

    handle = decoder_layers(loaded.model, loaded.layout)[layer].register_forward_hook(hook)
    try:
        for batch in batches:
            loaded.model(**batch, use_cache=False)
    finally:
        handle.remove()
    return torch.cat(states).mean(0)


def timed_rows(loaded: B.Loaded, layer: int, batch_size: int, prompts: tuple[list[str], list[str]],
               positive: list[dict[str, torch.Tensor]],
               negative: list[dict[str, torch.Tensor]]) -> dict[str, Callable[[], Any]]:
    """The timed rows of one batch size, each a callable processing every prompt once."""
    every = positive + negative
    return {
        "plain_forward": lambda: plain_forward(loaded, every),
        "record_full": lambda: recorder_direction(loaded, layer, positive, negative, stop_early=False),
        "record_early": lambda: recorder_direction(loaded, layer, positive, negative, stop_early=True),
        "plain_forward_text": lambda: plain_forward_text(loaded, prompts[0] + prompts[1], batch_size),
        "steerer_fit": lambda: steerer_direction(loaded, layer, prompts[0], prompts[1], batch_size),
    }


@torch.no_grad()
def last_layer_calls(loaded: B.Loaded, run: Callable[[], Any]) -> int:
    """How many times the last decoder layer ran during `run()`."""
    calls = [0]
    module = decoder_layers(loaded.model, loaded.layout)[-1]
    handle = module.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    try:
        run()
    finally:
        handle.remove()
    return calls[0]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = B.common_parser(__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256, help="prompts per class (positive and negative)")
    args = B.finish_args(parser, argv, {"batch_sizes": "4", "prompts": 8, "prompt_len": 12})
    # the generation default: extraction batches differently
    if args.batch_sizes == "1,64" and not args.smoke:
        args.batch_list = [32]
    device = args.device
    B.log(f"building {args.model} ({args.dtype}) on {device}")
    loaded = B.build_model(args.model, device, args.torch_dtype, args.seed)
    layer = B.middle_layer(loaded, args.layer)
    pos_prompts, neg_prompts = B.contrast_prompts(loaded, args.prompts, args.prompt_len, args.seed)
    pos_texts, neg_texts = B.rendered(loaded, pos_prompts), B.rendered(loaded, neg_prompts)
    results: dict[str, Any] = {
        "benchmark": "extract",
        "environment": B.environment(device),
        "settings": {
            "model": args.model, "dtype": args.dtype, "layer": layer, "prompts_per_class": args.prompts,
            "prompt_len": args.prompt_len, "repeats": args.repeats, "warmup": args.warmup,
            "batch_sizes": args.batch_list, "smoke": args.smoke, "num_layers": loaded.layout.num_layers,
            "positions": "decision (last prompt token)", "extractor": "diff_means",
        },
        "batches": {},
    }
    total_prompts = 2 * args.prompts
    for batch_size in args.batch_list:
        positive = batches_of(loaded, pos_texts, batch_size)
        negative = batches_of(loaded, neg_texts, batch_size)
        every = positive + negative
        tokens = int(sum(int(b["attention_mask"].sum()) for b in every))
        rows = timed_rows(loaded, layer, batch_size, (pos_prompts, neg_prompts), positive, negative)
        B.log(f"batch {batch_size}: checking directions against a reference")
        with torch.no_grad():
            reference = reference_direction(loaded, layer, positive, negative)
            checks: dict[str, dict[str, Any]] = {}
            for name in ("record_full", "record_early", "steerer_fit"):
                direction = rows[name]().float().cpu()
                checks[name] = {
                    "direction_norm": float(direction.norm()),
                    "rel_diff_vs_reference": float((direction - reference).norm() / reference.norm()),
                    "finite": bool(torch.isfinite(direction).all()),
                }
            checks["record_early"]["last_layer_calls"] = last_layer_calls(loaded, rows["record_early"])
            checks["record_full"]["last_layer_calls"] = last_layer_calls(loaded, rows["record_full"])
        B.log(f"batch {batch_size}: timing {len(rows)} rows x {args.warmup}+{args.repeats} rounds")
        samples: dict[str, list[float]] = {name: [] for name in rows}
        with torch.no_grad():
            for round_index in range(args.warmup + args.repeats):
                for name in B.rotated(list(rows), round_index):
                    seconds, _ = B.timed(rows[name], device)
                    if round_index >= args.warmup:
                        samples[name].append(seconds)
        table: dict[str, dict[str, Any]] = {}
        for name, runs in samples.items():
            seconds = B.median(runs)
            table[name] = {
                "seconds": seconds, "prompts_s": total_prompts / seconds, "tokens_s": tokens / seconds,
                "runs": runs,
            }
            if name in checks:
                table[name]["check"] = checks[name]
        targets = {}
        for name, (op, target) in TARGETS.items():
            value = B.ratio(table[name]["prompts_s"], table[BASELINES[name]]["prompts_s"])
            table[name]["ratio_vs_" + BASELINES[name]] = value
            passed = value >= target if op == ">=" else value > target
            targets[name] = {
                "ratio": value, "baseline": BASELINES[name], "target": f"{op} {target}", "pass": bool(passed),
            }
        results["batches"][str(batch_size)] = {
            "tokens": tokens, "batches": len(every), "rows": table, "targets": targets,
        }
        for name, entry in table.items():
            B.log(f"  {name:18s} {entry['prompts_s']:9.1f} prompts/s  ({entry['seconds'] * 1e3:8.1f} ms)")
    B.write_results(results, args.out)
    return results


if __name__ == "__main__":
    B.run_timed(main)
