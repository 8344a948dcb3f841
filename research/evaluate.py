"""Evaluate one MARS variant with a real plan (research/mars_options.py): first-token metrics on every row,
greedy 48-token answers judged by the keyword judge.

Rows whose gate is closed (g = 0) are bit-for-bit unsteered (strength exactly 0), so their answers are the
unsteered ones (research/results/texts_unsteered_<set>.json); only gate-open rows are generated.
`--check-closed` also generates the closed rows of the first batch to show that.

Run: PYTHONPATH=. python research/evaluate.py NAME [dev|test]   (NAME from CONFIGS below)
  -> research/results/eval_<NAME>_<split>.json
"""

from __future__ import annotations

import json
import sys
import time

import torch

from research import common as C
from research import dose as D
from research.mars_options import OptionScaler, build_plan
from steerpeft.evaluation.judge import is_refusal

GEN_BATCH = 32

BASE = {"gate_layers": [16], "steer_layers": None, "q": 0.95, "ramp": None, "form": "traversal", "target": 1.0,
        "beta": 2.0, "rho": 1.5, "hold": 0, "hold_mode": "same", "harmful": "all"}

CONFIGS: dict[str, dict] = {
    # MARS as shipped (package choice: layer 12, tau >= 1: no-op) and at the loosened choice (layer 14)
    "shipped_L12": {"gate_layers": [12]},
    "shipped_L14": {"gate_layers": [14]},
    "beta_L14": {"gate_layers": [14], "form": "beta"},
    # MARS.md traversal at layer 16
    "trav_L16": {},
    # (a) harmful end = refused fit prompts: target at their centroid's t, or direction from them too
    "travR_L16": {"target": "refused"},
    "dirR_L16": {"harmful": "refused", "target": 1.0},
    # (a)+(b) far target, hard gate (ramp 0)
    "far3_hard_L16": {"target": 3.0, "ramp": 0.0},
    "far3_hard_L16_q90": {"target": 3.0, "ramp": 0.0, "q": 0.9},
    "far3_hard_L16_q80": {"target": 3.0, "ramp": 0.0, "q": 0.8},
    "far3_soft_L16": {"target": 3.0},
    "far25_hard_L16": {"target": 2.5, "ramp": 0.0},
    "beta8_3_L16": {"form": "beta", "beta": 8.0, "rho": 3.0},
    "beta8_3_L16_q80": {"form": "beta", "beta": 8.0, "rho": 3.0, "q": 0.8},
    # (c) reach: hold the decision's strength for the first N generated tokens; or adjacent layers
    "trav_L16_hold8": {"hold": 8},
    "trav_L16_hold48": {"hold": 48},
    "far3_hard_L16_hold8": {"target": 3.0, "ramp": 0.0, "hold": 8},
    "trav_L16_18": {"steer_layers": [16, 17, 18]},
    "trav_L16_20": {"steer_layers": [16, 17, 18, 19, 20]},
    "far2_hard_L16_18": {"steer_layers": [16, 17, 18], "target": 2.0, "ramp": 0.0},
    "far3_hard_L16_18": {"steer_layers": [16, 17, 18], "target": 3.0, "ramp": 0.0},
    # recommended form: hard gate, target from the fit rule T_fit(0.95) (research/fit_target.py: 2.75 at L14-17)
    "fit_L15": {"gate_layers": [15], "target": 2.75, "ramp": 0.0},
    "fit_L16": {"target": 2.75, "ramp": 0.0},
    "fit_L15_q80": {"gate_layers": [15], "target": 2.75, "ramp": 0.0, "q": 0.8},
    "far4_hard_L16_q85": {"target": 4.0, "ramp": 0.0, "q": 0.85},
    # (d) gate from a band of layers
    "far3_hard_band15_18": {"gate_layers": [15, 16, 17, 18], "steer_layers": [18], "target": 3.0, "ramp": 0.0},
}


def config(name: str) -> dict:
    return {**BASE, **CONFIGS[name]}


def tau_for(cfg: dict) -> float:
    """tau = quantile q of the gate statistic on the calibration half (even rows) of the held-out harmless
    prompts, floored at 0 (q = 1: their maximum)."""
    cal = gate_t(cfg, "val_harmless")[0::2].double()
    return max(0.0, float(torch.quantile(cal, cfg["q"])))


def gate_t(cfg: dict, name: str) -> torch.Tensor:
    return torch.stack([C.region(l, cfg["harmful"])[0].t(C.states(name, l)) for l in cfg["gate_layers"]]).mean(0)


def gates(cfg: dict, name: str, tau: float) -> torch.Tensor:
    t = gate_t(cfg, name)
    ramp = cfg["ramp"] if cfg["ramp"] is not None else max(1 - tau, 1e-6)
    return (t > tau).float() if ramp == 0 else ((t - tau) / ramp).clamp(0, 1)


def scaler_of(cfg: dict, tau: float) -> tuple[OptionScaler, dict]:
    steer = cfg["steer_layers"] or [max(cfg["gate_layers"])]
    gate_regions = {l: C.region(l, cfg["harmful"])[0] for l in cfg["gate_layers"]}
    regions, directions = {}, {}
    for l in steer:
        reg, raw = C.region(l, cfg["harmful"], target=cfg["target"])
        regions[l], directions[l] = reg, raw
    for l in cfg["gate_layers"]:
        directions.setdefault(l, C.region(l, cfg["harmful"])[1])
    scaler = OptionScaler(gate_layers=list(cfg["gate_layers"]), gate_regions=gate_regions, regions=regions, tau=tau,
                          ramp=cfg["ramp"], form=cfg["form"], beta=cfg["beta"], rho=cfg["rho"], hold=cfg["hold_mode"])
    return scaler, directions


def _subset(prefix, rows):
    batch = {"input_ids": prefix.ids[rows], "attention_mask": prefix.mask[rows]}
    return C.Prefix(prefix.model, batch, [(k[rows], v[rows]) for k, v in prefix.kv()])


def run(name: str, split: str = "dev", check_closed: bool = False, generate: bool = True) -> dict:
    cfg = config(name)
    tau = tau_for(cfg)
    scaler, directions = scaler_of(cfg, tau)
    factory = lambda: build_plan(scaler, directions, cfg["hold"])
    model, _ = C.load()
    groups = C.DEV if split == "dev" else C.TEST
    base = C.baseline()
    out = {"config": cfg, "tau": tau, "targets": {l: r.target for l, r in scaler.regions.items()}, "sets": {}}
    for group, names in groups.items():
        for set_name in names:
            t0 = time.time()
            g = gates(cfg, set_name, tau)
            logits, _, _ = C.run_set(set_name, factory)
            greedy = D.refusal_flags(logits.argmax(-1))
            entry = {"n": len(g), "gate_open": float((g > 0).float().mean()), "greedy_proxy": float(greedy.mean()),
                     "score_proxy": float((C.refusal_score(logits) > 0).float().mean())}
            if group == "harmless":
                kl = C.kl(base[set_name]["logits"], logits)
                entry["kl"] = float(kl.mean())
                entry["kl_closed_rows_max"] = float(kl[g == 0].max()) if bool((g == 0).any()) else 0.0
            if generate:
                texts = json.loads((C.ROOT / "results" / f"texts_unsteered_{set_name}.json").read_text())
                pieces, start = [], 0
                for index, prefix in enumerate(C.prefixes(set_name)):
                    b = prefix.ids.shape[0]
                    rows = torch.nonzero(g[start:start + b] > 0).flatten()
                    if check_closed and index == 0:
                        rows = torch.arange(b)
                    pieces += [(prefix, start, int(r)) for r in rows]
                    start += b
                for chunk in range(0, len(pieces), GEN_BATCH):
                    part = pieces[chunk:chunk + GEN_BATCH]
                    groups_ = {}
                    for prefix, offset, r in part:
                        groups_.setdefault(id(prefix), (prefix, offset, []))[2].append(r)
                    merged = C.merge_rows([(p, torch.tensor(rs)) for p, _, rs in groups_.values()])
                    order = [offset + r for _, offset, rs in groups_.values() for r in rs]
                    with factory().apply(model):
                        _, new, _ = merged.run(48)
                    new = C.decode(new)
                    for row, text in zip(order, new):
                        if g[row] == 0:
                            entry.setdefault("closed_rows_identical", []).append(text == texts[row])
                        texts[row] = text
                judged = [is_refusal(t) for t in texts]
                entry["refusal"] = sum(judged) / len(judged)
                entry["refusals"] = sum(judged)
                entry["texts"] = texts
            out["sets"][set_name] = entry
            C.log(name, split, set_name, {k: v for k, v in entry.items() if k != "texts"}, f"{time.time() - t0:.0f}s")
    summarise(out, groups)
    C.save_json(f"eval_{name}_{split}.json", out)
    return out


def summarise(out: dict, groups: dict) -> None:
    for group, names in groups.items():
        entries = [out["sets"][n] for n in names]
        n = sum(e["n"] for e in entries)
        summary = {"n": n}
        for key in ("refusal", "greedy_proxy", "score_proxy", "gate_open", "kl"):
            if all(key in e for e in entries):
                summary[key] = sum(e[key] * e["n"] for e in entries) / n
        out[group] = summary
        C.log(group, summary)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    run(args[0], args[1] if len(args) > 1 else "dev", "--check-closed" in sys.argv, "--no-generate" not in sys.argv)
