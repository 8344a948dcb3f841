"""Issue 14: can another refusal direction, or another place to remove it, beat the `ablation` recipe's
refusal-KL trade on Qwen2.5-Coder-0.5B-Instruct?

Each candidate direction is a difference of means on the first 48 built-in harmful and harmless prompts,
removed (projected out) at the residual writers as the recipe does (embedding, attention and MLP outputs),
and scored on the next 32 of each: `bypass`, the change of the mean first-token refusal log-odds on harmful
prompts (lower removes more refusal), and the harmless first-token KL(unsteered || steered).

    python research/ablation_directions.py sink          # layers 0-18, also with position 0 (the sink) spared
    python research/ablation_directions.py positions     # layers 6-16 x the last 5 prompt positions
    python research/ablation_directions.py biprojection  # layers 8-16, harmless-mean component removed first
    python research/ablation_directions.py bands         # layers 12-18 removed only in a band of layers

Outputs are in `results/ablation_<mode>.txt`; `README.md` summarises them.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from steerpeft.data.prompts import builtin_prompts
from steerpeft.evaluation.first_token import refusal_token_ids
from steerpeft.inputs.text import render_chat
from steerpeft.models import load_model

GGUF = Path("/root/.cache/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct.gguf")
TRAIN, VALIDATION = slice(0, 48), slice(48, 80)
BANDS = {
    "all": lambda layer: None,
    ">=L-4": lambda layer: range(layer - 4, 24),
    ">=L": lambda layer: range(layer, 24),
    "<=L": lambda layer: range(0, layer + 1),
    "L-2..L+2": lambda layer: range(layer - 2, layer + 3),
}

model, tokenizer = load_model(str(GGUF), device="cpu")
model.eval()
harmful, harmless = list(builtin_prompts("harmful")), list(builtin_prompts("harmless"))
refusal_ids = torch.tensor(refusal_token_ids(tokenizer))


def encode(prompts, side="left"):
    tokenizer.padding_side = side
    return tokenizer([render_chat(tokenizer, p) for p in prompts], return_tensors="pt", padding=True)


@torch.no_grad()
def mean_states(prompts, back=1):
    """[layer + 1, back, hidden]: the mean hidden state at each of the last `back` positions."""
    states = model(**encode(prompts), output_hidden_states=True).hidden_states
    return torch.stack([torch.stack([h[:, -k].mean(0) for k in range(1, back + 1)]) for h in states])


def remove(direction, spare_first=False, band=None):
    """Hooks that project `direction` out of every writer (or only those of the layers in `band`)."""
    def project(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        part = (out @ direction).unsqueeze(-1) * direction
        if spare_first:  # right-padded batches: column 0 is every row's first token
            part[:, :1] = 0
        out = out - part
        return (out, *output[1:]) if isinstance(output, tuple) else out

    handles = [] if band is not None else [model.model.embed_tokens.register_forward_hook(project)]
    for index, layer in enumerate(model.model.layers):
        if band is None or index in band:
            handles += [layer.self_attn.register_forward_hook(project), layer.mlp.register_forward_hook(project)]
    return handles


@torch.no_grad()
def decision_logits(prompts, side="left"):
    batch = encode(prompts, side)
    logits = model(**batch).logits
    last = batch.attention_mask.sum(1) - 1 if side == "right" else torch.full((len(prompts),), -1)
    return logits[torch.arange(len(prompts)), last].float()


def log_odds(logits):
    p = logits.log_softmax(-1)[:, refusal_ids].logsumexp(-1)
    return (p - torch.log1p(-p.exp().clamp(max=1 - 1e-6))).mean().item()


def score(direction, spare_first=False, band=None):
    side = "right" if spare_first else "left"
    handles = remove(direction, spare_first, band)
    try:
        steered_harmful, steered_harmless = (decision_logits(harmful[VALIDATION], side),
                                             decision_logits(harmless[VALIDATION], side))
    finally:
        for handle in handles:
            handle.remove()
    kl = F.kl_div(steered_harmless.log_softmax(-1), BASE_HARMLESS.log_softmax(-1), log_target=True,
                  reduction="batchmean").item()
    return round(log_odds(steered_harmful) - log_odds(BASE_HARMFUL), 2), round(kl, 3)


BASE_HARMFUL, BASE_HARMLESS = decision_logits(harmful[VALIDATION]), decision_logits(harmless[VALIDATION])
mode = sys.argv[1] if len(sys.argv) > 1 else "positions"
back = 5 if mode == "positions" else 1
harmful_means, harmless_means = mean_states(harmful[TRAIN], back), mean_states(harmless[TRAIN], back)
directions = F.normalize(harmful_means - harmless_means, dim=-1)  # [layer + 1, position back, hidden]
print("base refusal log-odds: harmful", round(log_odds(BASE_HARMFUL), 3), "harmless",
      round(log_odds(BASE_HARMLESS), 3))
if mode == "positions":
    print("positions back from the end:", tokenizer.convert_ids_to_tokens(encode(harmful[:1]).input_ids[0, -5:]))
    for layer in range(6, 17):
        for k in range(1, 6):
            print(layer, f"position -{k}", "bypass, KL", score(directions[layer + 1, k - 1]), flush=True)
elif mode == "sink":
    for layer in range(0, 19):
        d = directions[layer + 1, 0]
        print(layer, "all positions", score(d), "position 0 spared", score(d, spare_first=True), flush=True)
elif mode == "biprojection":
    harmless_mean = F.normalize(harmless_means[:, 0], dim=-1)
    for layer in range(8, 17):
        d, mu = directions[layer + 1, 0], harmless_mean[layer + 1]
        spared = F.normalize(d - (d @ mu) * mu, dim=-1)
        print(layer, f"cos(d, harmless mean) {(d @ mu).item():.3f}", "plain", score(d), "biprojected",
              score(spared), flush=True)
elif mode == "bands":
    for layer in (12, 14, 16, 18):
        for name, band in BANDS.items():
            print(layer, name, "bypass, KL", score(directions[layer + 1, 0], band=band(layer)), flush=True)
else:
    raise SystemExit(f"unknown mode {mode!r}: sink, positions, biprojection or bands")
