"""Rebuild a shipped direction adapter for SmolLM2-135M-Instruct and record its measured effect.

    python directions/build.py ablation     # -> directions/smollm2-135m-refusal-ablation/
    python directions/build.py mars         # -> directions/smollm2-135m-mars/

Fits the built-in recipe of that name on the embedded model with the built-in prompts, exports
the PEFT adapter, then measures what loading the adapter does (`effect.json`, also quoted in the
card), so `tests/test_directions.py` can check every shipped adapter against its own record.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from steerpeft import load_recipe
from steerpeft.adapters import export_adapter, load_adapter
from steerpeft.data import builtin_prompts
from steerpeft.evaluation.kl import first_token_kl
from steerpeft.evaluation.runs import decision_logits
from steerpeft.inputs.text import encode_prompts
from steerpeft.io import atomic_write_text
from steerpeft.models import load_model

HERE = Path(__file__).resolve().parent
TARGETS = {"ablation": "smollm2-135m-refusal-ablation", "mars": "smollm2-135m-mars"}
PROBE_PROMPTS = 16


def probe_batches(tokenizer) -> dict[str, dict[str, torch.Tensor]]:
    """The fixed prompts an effect is measured on: the last 16 of each built-in set."""
    return {kind: encode_prompts(tokenizer, list(builtin_prompts(kind).prompts[-PROBE_PROMPTS:]))
            for kind in ("harmful", "harmless")}


@torch.no_grad()
def measure_effect(base, steered, tokenizer) -> dict[str, float]:
    """First-token KL and the share of prompts whose next-token logits change, per prompt set."""
    effect: dict[str, float] = {}
    for kind, batch in probe_batches(tokenizer).items():
        reference = decision_logits(base, batch)
        logits = decision_logits(steered, batch)
        effect[f"kl_{kind}"] = float(first_token_kl(reference, logits).mean())
        effect[f"changed_{kind}"] = float(((logits - reference).abs().amax(dim=-1) > 1e-6).double().mean())
    return effect


def build(name: str) -> Path:
    model, tokenizer = load_model()
    plan = load_recipe(name).fit(model, tokenizer)
    folder = HERE / TARGETS[name]
    export_adapter(plan, model, folder, card={"license": "apache-2.0",
                                              "reproduce": f"python directions/build.py {name}"})
    fresh, _ = load_model()
    steered = load_adapter(fresh, folder)
    effect = measure_effect(load_model()[0], steered, tokenizer)
    record = {"recipe": name, "layers": plan.steps[0].layers if name == "mars" else
              plan.metadata["steps"][plan.steps[0].name]["selected_layers"], "probe_prompts": PROBE_PROMPTS,
              "effect": effect, "reproduce": f"python directions/build.py {name}"}
    atomic_write_text(folder / "effect.json", json.dumps(record, indent=2) + "\n")
    card = folder / "README.md"
    atomic_write_text(card, card.read_text(encoding="utf-8") + "\n## Measured effect (effect.json)\n\n"
                      + "\n".join(f"- `{k}`: {v:.6g}" for k, v in effect.items())
                      + f"\n\nOn the last {PROBE_PROMPTS} built-in harmful and harmless prompts: first-token "
                      "KL from the base model, and the share of prompts whose next-token logits change.\n")
    print(json.dumps(record, indent=2))
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in TARGETS:
        raise SystemExit(f"usage: python directions/build.py {{{'|'.join(TARGETS)}}}")
    build(sys.argv[1])
