"""One process of tests/test_distributed.py, run under `python -m torch.distributed.run`.

Usage: distributed_worker.py MODEL_DIR OUT_DIR [gpu].  MODEL_DIR holds a saved tiny
model, its tokenizer and prompts.json; every process fits with its shard of
the prompts and writes what it got to OUT_DIR/rank<N>.safetensors, so the test
can check that all processes agree with a single-process fit.  With `gpu`,
each process uses its own GPU (NCCL) instead of the CPU (gloo).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from steerpeft import Steerer
from steerpeft.architectures import resolve_layout
from steerpeft.errors import DataError
from steerpeft.extractors import DiffMeans
from steerpeft.positions import GeneratedTokens
from steerpeft.selectors import FixedLayers

LAYERS = [1, 2]


def main(model_dir: Path, out_dir: Path, gpu: bool = False) -> None:
    state = PartialState(cpu=not gpu)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, attn_implementation="eager", dtype=torch.float32
    ).eval()
    model.to(state.device)
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = json.loads((model_dir / "prompts.json").read_text())
    steerer = Steerer(
        DiffMeans(), FixedLayers(LAYERS), validation_fraction=0, batch_size=2, accelerator=state
    )
    plan = steerer.fit(model, tok, prompts["positive"], prompts["negative"])
    tensors = {f"direction.{layer}": plan.steps[0].directions[layer] for layer in LAYERS}
    for name in ("positive", "negative"):
        acts = getattr(steerer.last_fit, name)
        tensors[f"{name}.counts"] = torch.tensor([acts.count, acts.num_prompts])
        for layer in LAYERS:
            tensors[f"{name}.rows.{layer}"] = acts.per_prompt[layer]
            tensors[f"{name}.sum.{layer}"] = acts.sums[layer]
    layout = resolve_layout(model)
    with torch.no_grad():
        # Fewer prompts than processes: the second process records an empty shard.
        one = steerer.record_prompts(model, tok, layout, prompts["positive"][:1], [1], "one")
        tensors["one.rows"], tensors["one.counts"] = (
            one.per_prompt[1], torch.tensor([one.count, one.num_prompts]),
        )
        # A failure on one process makes every process raise instead of waiting forever.
        try:
            steerer.record_prompts(
                model, tok, layout, prompts["positive"][:1], [1], "fail", positions=GeneratedTokens()
            )
            failure = "no error"
        except DataError as exc:
            failure = str(exc)
    (out_dir / f"rank{state.process_index}.txt").write_text(failure)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(out_dir / f"rank{state.process_index}.safetensors"),
    )
    state.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), gpu=sys.argv[3:] == ["gpu"])
