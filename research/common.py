"""Shared pieces of the Qwen MARS study (issue 14): model, prompt splits, cached states, fast evaluation.

Prompt sets (fit only on `fit_*`; choose on `*_dev`/`val_*`; confirm on `*_test`):
- fit_harmful / fit_harmless: the built-in training split (recipe mars: validation_fraction 0.4, seed 0 -> 55 + 55).
- val_harmful / val_harmless: the built-in validation split (37 + 37).  The harmless half is also what MARS
  calibrates tau on (even rows) and checks false triggers on (odd rows), as the package does.
- hb_dev / hb_test: HarmBench standard, even / odd lines (100 + 100).
- ba_dev / ba_test: benign anchors v1, even / odd items (25 + 25).  Interleaved, not first/second half: the file
  holds 30 plain then 20 XSTest-style prompts, so a first/second split would put no hard negative in dev.

Fast path.  Steering only at the decision position (the last prompt token) cannot change any earlier
position, so each batch is prefilled once without its last token (KV cache kept), and every condition runs
only the last token (plus decoding steps when generating) on a cropped copy of that cache.  Positions are
computed from the attention mask as `generate` does (left padding).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / "cache"
CACHE.mkdir(exist_ok=True)
MODEL_PATH = "/root/.cache/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct.gguf"
SHARED = Path("/work/shared/data")
VALIDATION_FRACTION = 0.4  # recipes/mars.yaml fit.validation_fraction
SEED = 0
BATCH = 16
NUM_LAYERS = 24

_MODEL = None


def load():
    global _MODEL
    if _MODEL is None:
        from steerpeft.models import load_model

        model, tok = load_model(MODEL_PATH)
        model.eval()
        _MODEL = (model, tok)
    return _MODEL


def prompt_sets() -> dict[str, list[str]]:
    from steerpeft.data import builtin_prompts
    from steerpeft.steerer import Steerer

    splitter = Steerer(validation_fraction=VALIDATION_FRACTION, seed=SEED)
    harmful, harmless = list(builtin_prompts("harmful").prompts), list(builtin_prompts("harmless").prompts)
    fit_h, val_h = splitter.split(harmful)
    fit_b, val_b = splitter.split(harmless)
    hb = [line.strip() for line in (SHARED / "harmbench/harmbench_standard.txt").read_text().splitlines() if line.strip()]
    ba = json.loads((SHARED / "benign-anchors/benign_anchors_v1.json").read_text())["benign"]
    return {
        "fit_harmful": fit_h, "fit_harmless": fit_b, "val_harmful": val_h, "val_harmless": val_b,
        "hb_dev": hb[0::2], "hb_test": hb[1::2], "ba_dev": ba[0::2], "ba_test": ba[1::2],
    }


HARMFUL_SETS = ("fit_harmful", "val_harmful", "hb_dev", "hb_test")
DEV = {"harmful": ("val_harmful", "hb_dev"), "harmless": ("val_harmless", "ba_dev")}
TEST = {"harmful": ("hb_test",), "harmless": ("ba_test",)}


def batches(tok, prompts: list[str]):
    from steerpeft.inputs.text import encode_prompts

    for start in range(0, len(prompts), BATCH):
        yield encode_prompts(tok, prompts[start:start + BATCH])


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


class Prefix:
    """One batch prefilled without its last token; `run` feeds the last token (and decoding steps)."""

    def __init__(self, model, batch, kv=None):
        from transformers import DynamicCache

        self.model = model
        self.ids, self.mask = batch["input_ids"], batch["attention_mask"]
        self.width = self.ids.shape[1]
        self.cache = DynamicCache(config=model.config)
        if kv is not None:
            for index, (k, v) in enumerate(kv):
                self.cache.update(k.float(), v.float(), index)
            return
        with torch.no_grad():
            model(input_ids=self.ids[:, :-1], attention_mask=self.mask[:, :-1],
                  position_ids=positions_of(self.mask)[:, :-1], past_key_values=self.cache, use_cache=True,
                  logits_to_keep=1)

    def kv(self):
        return [(layer.keys.clone(), layer.values.clone()) for layer in self.cache.layers]

    @torch.no_grad()
    def run(self, new_tokens: int = 1, hidden: bool = False):
        """(decision logits [B, V], generated ids [B, new_tokens] or None, hidden states tuple or None)."""
        from steerpeft.session import generation

        model, past = self.model, self.width - 1
        mask = self.mask
        position = positions_of(mask)[:, -1:]
        tokens = self.ids[:, -1:]
        generated = []
        try:
            with generation(model):
                out = model(input_ids=tokens, attention_mask=mask, position_ids=position, past_key_values=self.cache,
                            use_cache=True, output_hidden_states=hidden)
                first_logits = out.logits[:, -1].float()
                states = out.hidden_states if hidden else None
                logits = first_logits
                done = torch.zeros(tokens.shape[0], dtype=torch.bool)
                for step in range(new_tokens if new_tokens > 1 else 0):
                    token = logits.argmax(-1, keepdim=True)
                    generated.append(token)
                    done |= torch.isin(token[:, 0], stop_ids())
                    if step == new_tokens - 1 or bool(done.all()):
                        break
                    mask = torch.cat([mask, torch.ones_like(token)], dim=1)
                    position = position + 1
                    out = model(input_ids=token, attention_mask=mask, position_ids=position, past_key_values=self.cache,
                                use_cache=True)
                    logits = out.logits[:, -1].float()
        finally:
            extra = self.cache.get_seq_length() - past
            if extra > 0:
                self.cache.crop(-extra)
        ids = torch.cat(generated, dim=1) if generated else None
        return first_logits, ids, states


_PREFIXES: dict[str, list[Prefix]] = {}
_STOP = None


def stop_ids() -> torch.Tensor:
    global _STOP
    if _STOP is None:
        _, tok = load()
        ids = {tok.eos_token_id, tok.pad_token_id, tok.convert_tokens_to_ids("<|im_end|>"),
               tok.convert_tokens_to_ids("<|endoftext|>")}
        _STOP = torch.tensor(sorted(i for i in ids if i is not None))
    return _STOP


def prefixes(name: str) -> list[Prefix]:
    """The set's prefilled batches, cached on disk (research/cache/kv_<name>.pt)."""
    if name not in _PREFIXES:
        model, tok = load()
        path = CACHE / f"kv_{name}.pt"
        items = list(batches(tok, prompt_sets()[name]))
        if path.exists():
            kvs = torch.load(path)
            _PREFIXES[name] = [Prefix(model, b, kv) for b, kv in zip(items, kvs)]
        else:
            t0 = time.time()
            _PREFIXES[name] = [Prefix(model, b) for b in items]
            torch.save([p.kv() for p in _PREFIXES[name]], path)
            log(f"prefilled {name} ({len(items)} batches) in {time.time() - t0:.0f}s")
    return _PREFIXES[name]


def run_set(name: str, plan_factory=None, new_tokens: int = 1, hidden: bool = False):
    """Decision logits [n, V] (and generated texts, decision states [n, 24, H]) of one prompt set under a plan.

    `plan_factory()` returns a fresh Plan (or None = unsteered); it is applied per batch, so every batch
    starts a new steering session (its first forward is the prompt's decision token).
    """
    model, _ = load()
    logits, ids, states = [], [], []
    for prefix in prefixes(name):
        plan = plan_factory() if plan_factory is not None else None
        if plan is None:
            lg, gi, hs = prefix.run(new_tokens, hidden)
        else:
            with plan.apply(model):
                lg, gi, hs = prefix.run(new_tokens, hidden)
        logits.append(lg)
        if gi is not None:
            ids.extend(decode(gi))
        if hs is not None:
            states.append(torch.stack([h[:, -1].float() for h in hs[1:]], dim=1))  # [B, L, H] layer outputs
    return (torch.cat(logits), ids if ids else None, torch.cat(states) if states else None)


def decode(ids: torch.Tensor) -> list[str]:
    _, tok = load()
    eos = set(stop_ids().tolist())
    texts = []
    for row in ids.tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        texts.append(tok.decode(row[:cut], skip_special_tokens=True))
    return texts


_REFUSAL_IDS = None


def refusal_score(logits: torch.Tensor) -> torch.Tensor:
    global _REFUSAL_IDS
    from steerpeft.evaluation.first_token import first_token_refusal_score, refusal_token_ids

    if _REFUSAL_IDS is None:
        _REFUSAL_IDS = refusal_token_ids(load()[1])
    return first_token_refusal_score(logits, _REFUSAL_IDS)


_BASELINE = None


def baseline() -> dict[str, dict[str, torch.Tensor]]:
    """Per set: decision states [n, 24, 896] (layer outputs), base logits (harmless sets) and refusal scores.
    Cached on disk (research/cache/baseline.pt)."""
    global _BASELINE
    path = CACHE / "baseline.pt"
    if _BASELINE is not None:
        return _BASELINE
    if path.exists():
        _BASELINE = torch.load(path)
        return _BASELINE
    out = {}
    for name in prompt_sets():
        t0 = time.time()
        logits, _, states = run_set(name, None, 1, hidden=True)
        entry = {"states": states, "score": refusal_score(logits)}
        if name not in HARMFUL_SETS:
            entry["logits"] = logits.half()
        out[name] = entry
        print(f"baseline {name}: {len(states)} prompts, {time.time() - t0:.0f}s", flush=True)
    torch.save(out, path)
    return out


def kl(base_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    from steerpeft.evaluation.kl import first_token_kl

    return first_token_kl(base_logits.float(), logits)


def save_json(name: str, obj) -> None:
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / name).write_text(json.dumps(obj, indent=1, default=float))


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


# -- fit statistics from the cached decision states (layer outputs) ------------------------------------------
def states(name: str, layer: int) -> torch.Tensor:
    return baseline()[name]["states"][:, layer].float()


def refused_rows(name: str = "fit_harmful", how: str = "score") -> torch.Tensor:
    """Bool mask of the set's prompts the unsteered model refuses: first-token log-odds > 0 (`score`) or the
    keyword judge on its greedy 48-token answer (`judged`, needs research/baseline.py to have run)."""
    if how == "score":
        return baseline()[name]["score"] > 0
    from steerpeft.evaluation.judge import is_refusal

    texts = json.loads((ROOT / "results" / f"texts_unsteered_{name}.json").read_text())
    return torch.tensor([is_refusal(t) for t in texts])


def region(layer: int, harmful: str = "all", target: float | str = 1.0):
    """Region of `layer` fitted on the training split.

    harmful="all": u from mu+(all fit harmful) - mu-; "refused"/"refused_judged": u from the centroid of the
    fit harmful prompts the model refuses (score > 0 / keyword judge).  `target` in t units, or "refused" /
    "refused_judged": the t of the refused centroid on this region's u.  Returns (Region, raw direction).
    """
    from research.mars_options import Region

    pos, neg = states("fit_harmful", layer), states("fit_harmless", layer)
    mu_minus = neg.mean(0)
    mu_plus = pos.mean(0) if harmful == "all" else pos[refused_rows(how="judged" if harmful.endswith("judged") else "score")].mean(0)
    raw = mu_plus - mu_minus
    unit = raw / raw.norm()
    p_minus = float(mu_minus @ unit)
    span = float(mu_plus @ unit) - p_minus
    reg = Region(unit, p_minus, span, 1.0)
    if isinstance(target, str):
        rows = refused_rows(how="judged" if target.endswith("judged") else "score")
        reg.target = float(reg.t(pos[rows]).mean())
    else:
        reg.target = float(target)
    return reg, raw


def tau_of(reg, layer: int, quantile: float = 0.95, rows: str = "calibration") -> float:
    """MARS tau: `quantile` of t on the calibration half (even rows) of the held-out harmless prompts, floored at 0."""
    t = reg.t(states("val_harmless", layer))
    t = t[0::2] if rows == "calibration" else t
    return max(0.0, float(torch.quantile(t.double(), quantile)))


def merge_rows(pieces, pad_id: int | None = None):
    """One Prefix from rows of several prefilled batches (pieces: [(Prefix, row indices)]), left-padded to a
    common width; padded cache entries are zeros under attention mask 0, so each row computes as before."""
    if pad_id is None:
        pad_id = load()[1].pad_token_id
    width = max(p.width for p, _ in pieces)
    ids, masks, kvs = [], [], None
    for prefix, rows in pieces:
        extra = width - prefix.width
        ids.append(torch.nn.functional.pad(prefix.ids[rows], (extra, 0), value=pad_id))
        masks.append(torch.nn.functional.pad(prefix.mask[rows], (extra, 0), value=0))
        layers = [(torch.nn.functional.pad(k[rows], (0, 0, extra, 0)), torch.nn.functional.pad(v[rows], (0, 0, extra, 0)))
                  for k, v in prefix.kv()]
        kvs = [[(k,), (v,)] for k, v in layers] if kvs is None else [[a + (k,), b + (v,)] for (a, b), (k, v) in zip(kvs, layers)]
    kv = [(torch.cat(a), torch.cat(b)) for a, b in kvs]
    return Prefix(load()[0], {"input_ids": torch.cat(ids), "attention_mask": torch.cat(masks)}, kv)
