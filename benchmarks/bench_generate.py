"""Generation throughput of steered vs unsteered models, measured in one process.

Rows (same model, same prompts, greedy, every run generates exactly --new-tokens tokens):

- `unsteered`: the plain model.
- `actadd`: ActAdd at one layer, every token (prompt and generated).
- `mars`: a MARS trust-region scaler (built by hand, gate open) at one layer, decision position.
- `ablate_hooks`: directional ablation at every decoder layer output and the embedding, via hooks.
- `ablate_writers`: the same at every residual writer (o_proj, down_proj) and the embedding
  (`site="writers"`, 2 hooks per layer; skipped when this steerpeft has no writer site).
- `ablate_merged`: the ablation merged into a copy of the weights (no hooks at all); it equals
  `ablate_writers` exactly, and `ablate_hooks` only approximately (the MLP there still reads the
  attention output's component along the direction).

For each batch size, rows are timed round-robin (the order rotates every repeat) with the
device synchronised around each run; medians are reported, and ratios steered/unsteered come
from the same process.  Prefill = `generate(max_new_tokens=1)`; decode tokens/s =
batch * (new_tokens - 1) / (total - prefill).  Before timing, each steered row's last-position
logits are compared with the unsteered ones: a row that did not steer is flagged, so the
benchmark cannot silently time nothing.

`--compile` also checks `torch.compile` on the steered model, through transformers' own path
(static cache + `compile_config`): does it compile, are steered logits still those of eager
steering (max abs diff, with the unsteered compiled-vs-eager diff as the noise floor), speed.

    python benchmarks/bench_generate.py --model 1b --batch-sizes 1,64 --new-tokens 64 --out gen-1b.json
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B

from steerpeft.plan import Plan

TARGETS = {"actadd": 0.98, "mars": 0.98, "ablate_hooks": 0.90, "ablate_writers": 0.90, "ablate_merged": 0.98}
MERGED_NOISE = 0.02
"""`ablate_merged` must equal unsteered within this relative tolerance (same weights shapes, no hooks)."""


class Row:
    """One configuration: which model object runs, and what steers it while it runs.

    `plan` is a steerpeft plan applied around each run; `context` (for other libraries) is a
    callable returning a context manager that steers `model` while it is open.
    """

    def __init__(self, name: str, model: torch.nn.Module, plan: Plan | None, note: str = "",
                 context: Callable[[], Any] | None = None) -> None:
        self.name, self.model, self.plan, self.note, self.context = name, model, plan, note, context

    def applied(self) -> Any:
        if self.context is not None:
            return self.context()
        return self.plan.apply(self.model) if self.plan is not None else None


def generate(model: torch.nn.Module, batch: dict[str, torch.Tensor], new_tokens: int, **extra: Any) -> Any:
    return model.generate(
        **batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, **extra
    )


@torch.no_grad()
def check_rows(
    rows: Sequence[Row], batch: dict[str, torch.Tensor], new_tokens: int
) -> dict[str, dict[str, Any]]:
    """Per row: max abs diff of last-position logits and share of generated tokens changed, vs unsteered."""
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    # Explicit position ids, as generate computes them (repeng's layer wrapper needs them at batch > 1).
    mask = batch["attention_mask"].long()
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    for row in rows:
        with B.maybe(row.applied()):
            logits = row.model(**batch, position_ids=positions, use_cache=False).logits[:, -1, :].float()
            tokens = generate(row.model, batch, new_tokens)[:, batch["input_ids"].shape[1]:]
        outputs[row.name] = (logits, tokens)
    base_logits, base_tokens = outputs["unsteered"]
    checks: dict[str, dict[str, Any]] = {}
    for row in rows:
        logits, tokens = outputs[row.name]
        checks[row.name] = {
            "logit_diff_vs_unsteered": B.max_abs_diff(logits, base_logits),
            "tokens_changed_vs_unsteered": float((tokens != base_tokens).float().mean()),
            "finite": bool(torch.isfinite(logits).all()),
        }
        if row.name != "unsteered":
            checks[row.name]["steered"] = checks[row.name]["logit_diff_vs_unsteered"] > 0
    if "ablate_merged" in outputs:
        checks["ablate_merged"]["logit_scale"] = float(base_logits.abs().max())
        for other, key in (
            ("ablate_hooks", "logit_diff_vs_hooks"), ("ablate_writers", "logit_diff_vs_writers"),
        ):
            if other in outputs:
                checks["ablate_merged"][key] = B.max_abs_diff(outputs["ablate_merged"][0], outputs[other][0])
    return checks


def time_rows(rows: Sequence[Row], batch: dict[str, torch.Tensor], new_tokens: int, repeats: int, warmup: int,
              device: torch.device) -> dict[str, dict[str, list[float]]]:
    """Round-robin timing: every repeat runs each row's prefill and full generation once."""
    samples = {row.name: {"prefill_s": [], "total_s": []} for row in rows}
    for round_index in range(warmup + repeats):
        for row in B.rotated(rows, round_index):
            with B.maybe(row.applied()):
                prefill, _ = B.timed(lambda row=row: generate(row.model, batch, 1), device)
                total, out = B.timed(lambda row=row: generate(row.model, batch, new_tokens), device)
            if out.shape[1] - batch["input_ids"].shape[1] != new_tokens:
                raise RuntimeError(f"{row.name}: generated {out.shape[1] - batch['input_ids'].shape[1]} "
                                   f"tokens, expected {new_tokens}")
            if round_index >= warmup:
                samples[row.name]["prefill_s"].append(prefill)
                samples[row.name]["total_s"].append(total)
    return samples


def summarize(samples: dict[str, dict[str, list[float]]], batch_size: int, prompt_tokens: int,
              new_tokens: int) -> dict[str, dict[str, Any]]:
    """Medians, tokens/s and ratios to the unsteered row."""
    table: dict[str, dict[str, Any]] = {}
    for name, runs in samples.items():
        decode = [t - p for t, p in zip(runs["total_s"], runs["prefill_s"])]
        prefill, total, decode_s = B.median(runs["prefill_s"]), B.median(runs["total_s"]), B.median(decode)
        table[name] = {
            "prefill_ms": prefill * 1e3,
            "total_ms": total * 1e3,
            "decode_ms_per_step": decode_s * 1e3 / max(1, new_tokens - 1),
            "prefill_tok_s": prompt_tokens / prefill,
            "decode_tok_s": batch_size * (new_tokens - 1) / decode_s if decode_s > 0 else float("nan"),
            "total_tok_s": batch_size * new_tokens / total,
            "runs": runs,
        }
    base = table["unsteered"]
    for name, entry in table.items():
        for metric in ("prefill_tok_s", "decode_tok_s", "total_tok_s"):
            entry[f"ratio_{metric}"] = B.ratio(entry[metric], base[metric])
        # Run-to-run spread of this row: (max - min) / median of the total time.
        totals = entry["runs"]["total_s"]
        entry["spread"] = (max(totals) - min(totals)) / B.median(totals) if len(totals) > 1 else float("nan")
    return table


def verdicts(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The lead's targets, on end-to-end generated tokens/s (decode-dominated) and on decode alone."""
    out: dict[str, dict[str, Any]] = {}
    for name, target in TARGETS.items():
        if name not in table:
            continue
        total, decode = table[name]["ratio_total_tok_s"], table[name]["ratio_decode_tok_s"]
        if name == "ablate_merged":
            passed = abs(total - 1.0) <= MERGED_NOISE or total >= 1.0
            rule = f"abs(ratio - 1) <= {MERGED_NOISE} (or faster)"
        else:
            passed = total >= target
            rule = f">= {target}"
        out[name] = {"ratio_total": total, "ratio_decode": decode, "target": rule, "pass": bool(passed)}
    return out


# ---------------------------------------------------------------------------------------------
# torch.compile


def compile_check(rows: Sequence[Row], batch: dict[str, torch.Tensor], new_tokens: int, repeats: int,
                  device: torch.device) -> dict[str, Any]:
    """Generation through transformers' compiled path (static cache), per row, vs eager."""
    import torch._dynamo
    from transformers import CompileConfig

    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = max(64, torch._dynamo.config.recompile_limit)
    report: dict[str, Any] = {
        "path": "generate(cache_implementation='static', compile_config=CompileConfig())", "rows": {},
    }
    eager_logits: dict[str, torch.Tensor] = {}
    for row in rows:
        if row.name == "ablate_merged":
            continue
        entry: dict[str, Any] = {}
        config = CompileConfig()
        if device.type != "cuda":
            config._compile_all_devices = True  # transformers only auto-compiles on accelerators
        common = {"cache_implementation": "static", "return_dict_in_generate": True, "output_logits": True}
        torch._dynamo.reset()
        counters = torch._dynamo.utils.counters
        counters.clear()
        try:
            with B.maybe(row.applied()):
                out = generate(row.model, batch, new_tokens, return_dict_in_generate=True, output_logits=True)
                dynamic = torch.stack(out.logits, 1).float()
                out = generate(row.model, batch, new_tokens, disable_compile=True, **common)
                eager = torch.stack(out.logits, 1).float()
                eager_logits[row.name] = eager
                # A static cache makes generate pass 4-D masks: steerpeft must still steer the same tokens.
                entry["max_abs_logit_diff_static_vs_dynamic_eager"] = B.max_abs_diff(eager, dynamic)
                start = time.perf_counter()
                out = generate(row.model, batch, new_tokens, compile_config=config, **common)
                B.synchronize(device)
                entry["first_call_s"] = time.perf_counter() - start
                compiled = torch.stack(out.logits, 1).float()
                # A second call may recompile (dynamic shapes are marked on the second distinct value).
                generate(row.model, batch, new_tokens, compile_config=config, **common)
                times = []
                for _ in range(repeats):
                    seconds, _ = B.timed(lambda row=row, config=config, common=common: generate(
                        row.model, batch, new_tokens, compile_config=config, **common), device)
                    times.append(seconds)
                eager_times = []
                for _ in range(repeats):
                    seconds, _ = B.timed(lambda row=row, common=common: generate(
                        row.model, batch, new_tokens, disable_compile=True, **common), device)
                    eager_times.append(seconds)
            entry.update({
                "compiles": True,
                "max_abs_logit_diff_compiled_vs_eager": B.max_abs_diff(compiled, eager),
                "compiled_total_s": B.median(times),
                "eager_static_total_s": B.median(eager_times),
                "compiled_tok_s": batch["input_ids"].shape[0] * new_tokens / B.median(times),
                "graph_breaks": int(sum(counters["graph_break"].values())),
                "graph_break_reasons": sorted({r.splitlines()[0][:160] for r in counters["graph_break"]})[:8],
                "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
            })
        except Exception as exc:  # noqa: BLE001 - recorded in the results
            entry.update({"compiles": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
        report["rows"][row.name] = entry
    base = report["rows"].get("unsteered", {})
    for name, entry in report["rows"].items():
        if entry.get("compiles") and base.get("compiles"):
            entry["ratio_compiled_tok_s"] = B.ratio(entry["compiled_tok_s"], base["compiled_tok_s"])
        if name in eager_logits and "unsteered" in eager_logits:
            entry["eager_steering_effect"] = B.max_abs_diff(eager_logits[name], eager_logits["unsteered"])
    report["noise_floor"] = base.get("max_abs_logit_diff_compiled_vs_eager")
    torch._dynamo.reset()
    return report


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = B.common_parser(__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per run (forced)")
    parser.add_argument("--rows", default="unsteered,actadd,mars,ablate_hooks,ablate_writers,ablate_merged")
    parser.add_argument(
        "--compile", action="store_true", help="also check torch.compile on the steered model"
    )
    parser.add_argument("--compile-batch", type=int, default=1, help="batch size of the compile check")
    parser.add_argument(
        "--compile-only", action="store_true", help="skip the eager timing (only the compile check)"
    )
    args = B.finish_args(parser, argv, {"batch_sizes": "1,3", "new_tokens": 4, "prompt_len": 8})
    device = args.device
    B.log(f"building {args.model} ({args.dtype}) on {device}")
    start = time.perf_counter()
    loaded = B.build_model(args.model, device, args.torch_dtype, args.seed)
    build_s = time.perf_counter() - start
    layer = B.middle_layer(loaded, args.layer)
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    if "unsteered" not in wanted:
        wanted.insert(0, "unsteered")

    unit = B.random_unit(loaded.layout.hidden_size, args.seed + 1)
    probe = B.generation_batch(loaded, min(8, max(args.batch_list)), args.prompt_len, args.seed + 7)
    stats = B.layer_statistics(loaded, probe, layer, unit)
    ablation = B.ablation_plan(loaded, unit)
    rows: list[Row] = []
    skipped: list[str] = []
    merge_note = ""
    for name in wanted:
        if name == "unsteered":
            rows.append(Row(name, loaded.model, None))
        elif name == "actadd":
            rows.append(Row(name, loaded.model, B.actadd_plan(loaded, layer, unit * stats["mean_norm"]),
                            f"layer {layer}, all tokens, |v| = mean residual norm"))
        elif name == "mars":
            rows.append(Row(name, loaded.model, B.mars_plan(loaded, layer, unit, stats),
                            f"layer {layer}, decision position, trust region gate open"))
        elif name == "ablate_hooks":
            rows.append(Row(name, loaded.model, ablation,
                            f"{loaded.layout.num_layers} layer outputs + embedding, all tokens"))
        elif name == "ablate_writers":
            if not B.supports_writer_site():
                skipped.append(name)
                continue
            rows.append(Row(name, loaded.model, B.ablation_plan(loaded, unit, site="writers"),
                            f"{2 * loaded.layout.num_layers} residual writers + embedding, all tokens"))
        elif name == "ablate_merged":
            merged, merge_note = B.merged_ablation_model(loaded, ablation, unit)
            rows.append(Row(name, merged, None, merge_note))
        else:
            parser.error(f"unknown row {name!r}")

    results: dict[str, Any] = {
        "benchmark": "generate",
        "environment": B.environment(device),
        "settings": {
            "model": args.model, "dtype": args.dtype, "layer": layer, "new_tokens": args.new_tokens,
            "prompt_len": args.prompt_len, "repeats": args.repeats, "warmup": args.warmup,
            "batch_sizes": args.batch_list, "smoke": args.smoke, "build_s": build_s,
            "num_layers": loaded.layout.num_layers, "hidden_size": loaded.layout.hidden_size,
            "parameters": sum(p.numel() for p in loaded.model.parameters()),
            "weights": "real (SmolLM2-135M-Instruct)" if loaded.real_weights else "random (normal 0.02)",
        },
        "rows": {row.name: row.note for row in rows},
        "skipped_rows": skipped,
        "layer_statistics": stats,
        "batches": {},
    }
    for batch_size in [] if args.compile_only else args.batch_list:
        batch = B.generation_batch(loaded, batch_size, args.prompt_len, args.seed + batch_size)
        prompt_tokens = int(batch["attention_mask"].sum())
        B.log(f"batch {batch_size}: checking that steered rows steer")
        checks = check_rows(rows, batch, min(args.new_tokens, 8))
        B.log(f"batch {batch_size}: timing {len(rows)} rows x {args.warmup}+{args.repeats} rounds")
        samples = time_rows(rows, batch, args.new_tokens, args.repeats, args.warmup, device)
        table = summarize(samples, batch_size, prompt_tokens, args.new_tokens)
        for name in table:
            table[name]["check"] = checks[name]
        results["batches"][str(batch_size)] = {
            "prompt_tokens": prompt_tokens, "prompt_width": int(batch["input_ids"].shape[1]),
            "rows": table, "targets": verdicts(table),
        }
        if args.out:  # keep what is done if the run is cut short
            B.write_results({**results, "complete": False}, args.out)
        for name, entry in table.items():
            B.log(f"  {name:14s} total {entry['total_tok_s']:9.1f} tok/s  decode "
                  f"{entry['decode_tok_s']:9.1f} tok/s  prefill {entry['prefill_tok_s']:10.1f} tok/s  ratio "
                  f"{entry['ratio_total_tok_s']:.3f}")
    if args.compile or args.compile_only:
        batch = B.generation_batch(loaded, args.compile_batch, args.prompt_len, args.seed + 99)
        B.log(f"compile check at batch {args.compile_batch}")
        results["compile"] = compile_check(rows, batch, args.new_tokens, max(1, args.repeats), device)
        results["compile"]["batch_size"] = args.compile_batch
    results["complete"] = True
    B.write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
