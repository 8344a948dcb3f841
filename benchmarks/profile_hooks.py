"""Per-hook cost of steering on one cached decoding step: time and aten ops (~ kernel launches).

Decoding in eager transformers is bound by kernel launches, so the number of extra aten ops a
hook adds per step is what decides the steered/unsteered ratio.  Configurations: no hooks,
identity hooks (the floor any hook-based library pays), steerpeft ActAdd / MARS / ablation
(layer outputs and, when available, writers), and a hand-fused ablation hook
(`addcmul(h, (h @ u)[..., None], u, value=-1)`: what a fused implementation would cost).
steerpeft's ablation is timed twice: as it runs (one GEMM with I - u u^T on decoding-sized
chunks on an accelerator) and with that projector form switched off (matvec + rank-1 update).

    python benchmarks/profile_hooks.py --model 1b --out hooks-1b.json
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B

from steerpeft.architectures import decoder_layers, get_module
from steerpeft.session import generation


@contextmanager
def plain_hooks(loaded: B.Loaded, hook: Callable[..., Any], layers: int, embedding: bool) -> Iterator[None]:
    modules = list(decoder_layers(loaded.model, loaded.layout))[:layers]
    if embedding:
        modules.append(get_module(loaded.model, loaded.layout.embedding_path))
    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def rank_one_ablation(loaded: B.Loaded, unit: torch.Tensor) -> Iterator[None]:
    """steerpeft's ablation with the one-GEMM projector form switched off (matvec + rank-1 update)."""
    from steerpeft.interventions import ablate

    original = ablate.uses_projector
    ablate.uses_projector = lambda hidden: False
    try:
        with B.ablation_plan(loaded, unit).apply(loaded.model):
            yield
    finally:
        ablate.uses_projector = original


def fused_ablation_hook(unit: torch.Tensor) -> Callable[..., Any]:
    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        steered = torch.addcmul(hidden, (hidden @ unit).unsqueeze(-1), unit, value=-1.0)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    return hook


@torch.no_grad()
def decode_steps(loaded: B.Loaded, batch: dict[str, torch.Tensor], steps: int) -> tuple[float, int]:
    """(median seconds per cached decoding step, top-level aten ops in one step)."""
    model, device = loaded.model, loaded.device
    with generation(model):  # as inside `generate`: cached steps continue the prompt (fast path)
        return _decode_steps(model, device, batch, steps)


def _decode_steps(model: torch.nn.Module, device: torch.device, batch: dict[str, torch.Tensor],
                  steps: int) -> tuple[float, int]:
    out = model(**batch, use_cache=True)
    cache, ids, mask = out.past_key_values, batch["input_ids"][:, -1:], batch["attention_mask"]
    times = []
    for _ in range(steps):
        mask = torch.cat([mask, mask[:, :1]], 1)
        seconds, _ = B.timed(
            lambda mask=mask: model(
                input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True
            ),
            device,
        )
        times.append(seconds)
    mask = torch.cat([mask, mask[:, :1]], 1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
    ops = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in ops if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return statistics.median(times), len(top)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = B.common_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=50, help="timed decoding steps per configuration and round"
    )
    args = B.finish_args(parser, argv, {"batch_sizes": "1", "steps": 5, "prompt_len": 8})
    loaded = B.build_model(args.model, args.device, args.torch_dtype, args.seed)
    layer, layers = B.middle_layer(loaded, args.layer), loaded.layout.num_layers
    dtype = next(loaded.model.parameters()).dtype
    unit = B.random_unit(loaded.layout.hidden_size, args.seed + 1)
    batch = B.generation_batch(loaded, args.batch_list[0], args.prompt_len, args.seed)
    stats = B.layer_statistics(loaded, batch, layer, unit)
    unit_on = unit.to(loaded.device, dtype)
    configs: dict[str, tuple[Callable[[], Any], int]] = {
        "unsteered": (lambda: None, 0),
        "identity hook x1": (lambda: plain_hooks(loaded, lambda m, a, o: o, 1, False), 1),
        f"identity hooks x{layers + 1}": (
            lambda: plain_hooks(loaded, lambda m, a, o: o, layers, True), layers + 1,
        ),
        "steerpeft actadd x1": (
            lambda: B.actadd_plan(loaded, layer, unit * stats["mean_norm"]).apply(loaded.model), 1,
        ),
        "steerpeft mars x1 (gate idle when decoding)": (
            lambda: B.mars_plan(loaded, layer, unit, stats).apply(loaded.model), 1,
        ),
        f"steerpeft ablate outputs x{layers + 1}": (
            lambda: B.ablation_plan(loaded, unit).apply(loaded.model), layers + 1,
        ),
        f"steerpeft ablate outputs, rank-1 form x{layers + 1}": (
            lambda: rank_one_ablation(loaded, unit), layers + 1,
        ),
        f"fused ablate hook x{layers + 1}": (
            lambda: plain_hooks(loaded, fused_ablation_hook(unit_on), layers, True), layers + 1,
        ),
    }
    if B.supports_writer_site():
        configs[f"steerpeft ablate writers x{2 * layers + 1}"] = (
            lambda: B.ablation_plan(loaded, unit, site="writers").apply(loaded.model), 2 * layers + 1)
    samples: dict[str, list[float]] = {name: [] for name in configs}
    ops: dict[str, int] = {}
    for round_index in range(args.warmup + max(1, args.repeats)):
        for name in B.rotated(list(configs), round_index):
            with B.maybe(configs[name][0]()):
                seconds, count = decode_steps(loaded, batch, args.steps)
            if round_index >= args.warmup:
                samples[name].append(seconds)
                ops[name] = count
    base_s, base_ops = B.median(samples["unsteered"]), ops["unsteered"]
    table = {}
    for name, (_, hooks) in configs.items():
        step = B.median(samples[name])
        table[name] = {
            "hooks": hooks, "us_per_step": step * 1e6, "extra_us_per_step": (step - base_s) * 1e6,
            "aten_ops_per_step": ops[name], "extra_ops_per_step": ops[name] - base_ops,
            "extra_us_per_hook": (step - base_s) * 1e6 / hooks if hooks else 0.0,
            "ratio_step_time": step / base_s,
        }
        B.log(f"{name:44s} {step * 1e6:9.1f} us/step  +{(step - base_s) * 1e6:7.1f} us  "
              f"ops {ops[name]} (+{ops[name] - base_ops})")
    results = {
        "benchmark": "hooks", "environment": B.environment(args.device),
        "settings": {
            "model": args.model, "dtype": args.dtype, "layer": layer, "batch_size": args.batch_list[0],
            "steps": args.steps, "repeats": args.repeats, "smoke": args.smoke,
        },
        "rows": table,
    }
    B.write_results(results, args.out)
    return results


if __name__ == "__main__":
    B.run_timed(main)
