"""Steering a model spread over several GPUs with device_map: exact, and tensors moved once.

Builds a small random Llama, saves it, loads it twice: on one GPU, and split layer-wise over
every visible GPU with `device_map`.  The same plans (ActAdd at a late layer, MARS-style
decision steering, ablation at every writer) must give the same logits on both, and each
step's direction cache must hold one entry per layer, on that layer's device.

    python benchmarks/check_multi_gpu.py --out multi_gpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from steerpeft.architectures import resolve_layout
from steerpeft.interventions import Ablate, AddDirection
from steerpeft.plan import EMBEDDING, Plan, SteeringStep
from steerpeft.provenance import model_info
from steerpeft.scalers import ConstantScaler


def plans(model) -> dict[str, Plan]:
    layout = resolve_layout(model)
    generator = torch.Generator().manual_seed(0)
    v = torch.randn(layout.hidden_size, generator=generator)
    last = layout.num_layers - 2
    info = model_info(model, layout)
    every = [EMBEDDING, *range(layout.num_layers)]
    return {
        "actadd_late_layer": Plan(
            [SteeringStep({last: v}, AddDirection(), ConstantScaler(2.0), "all", "add")], info
        ),
        "decision_two_layers": Plan([SteeringStep({1: v, last: v}, AddDirection(normalize=True),
                                                  ConstantScaler(4.0), "decision", "dec")], info),
        "ablate_writers": Plan(
            [SteeringStep({l: v for l in every}, Ablate(), ConstantScaler(1.0), "all", "abl", "writers")],
            info,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="multi_gpu.json")
    args = parser.parse_args()
    gpus = torch.cuda.device_count()
    if gpus < 2:
        raise SystemExit(f"needs at least 2 GPUs, found {gpus}")
    config = LlamaConfig(hidden_size=512, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=4, vocab_size=1000)
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp()) / "model"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    per_gpu = config.num_hidden_layers // gpus
    device_map = {"model.embed_tokens": 0, "model.norm": gpus - 1, "model.rotary_emb": 0, "lm_head": gpus - 1}
    device_map.update(
        {f"model.layers.{i}": min(i // per_gpu, gpus - 1) for i in range(config.num_hidden_layers)}
    )
    single = AutoModelForCausalLM.from_pretrained(folder, device_map={"": 0}).eval()
    spread = AutoModelForCausalLM.from_pretrained(folder, device_map=device_map).eval()
    ids = torch.randint(0, 1000, (4, 24), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    results = {"gpus": gpus, "device_map": {k: int(v) for k, v in device_map.items()}, "plans": {}}
    for name, plan in plans(single).items():
        with torch.no_grad():
            with plan.apply(single):
                a = single(input_ids=ids.to("cuda:0"), attention_mask=mask.to("cuda:0")).logits.float().cpu()
            with plan.apply(spread):
                b = spread(input_ids=ids.to("cuda:0"), attention_mask=mask.to("cuda:0")).logits.float().cpu()
                b2 = spread(input_ids=ids.to("cuda:0"), attention_mask=mask.to("cuda:0")).logits.float().cpu()
            base = spread(input_ids=ids.to("cuda:0"), attention_mask=mask.to("cuda:0")).logits.float().cpu()
        cache = plan.steps[0]._cache
        devices = {str(layer): str(dev) for (layer, dev, _dtype) in cache}
        results["plans"][name] = {
            "max_abs_diff_single_vs_spread": float((a - b).abs().max()),
            "steering_effect": float((b - base).abs().max()),
            "repeat_identical": bool(torch.equal(b, b2)),
            "cache_entries": len(cache),
            "cache_devices": devices,
        }
    print(json.dumps(results, indent=2))
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
