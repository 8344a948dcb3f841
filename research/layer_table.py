"""Issue 14 (d): per-layer gate statistics, and first-token effects from the dose tables.

Per layer (0..23; the recipe's candidates are 5..18): AUROC of t on the built-in validation split and on
HarmBench dev vs benign-anchors dev; tau = 95th percentile of t on the calibration half (even rows, 19) of
the held-out built-in harmless prompts, floored at 0; degenerate = tau >= 1 (then the traversal moves
nothing); false triggers on the check half (odd rows, 18) with the one-sided 95% Clopper-Pearson upper
bound, and on benign-anchors dev (25); gate recall on val harmful and HarmBench dev; the gate ceiling
(share of harmful dev that is gate-open or already refused unsteered by the keyword judge: no gated,
decision-only method can refuse more); t of the refused fit centroid; the conformal tau (max of all 37
held-out harmless t) with its recall.
Where research/cache/dose_L<l>.pt exists, the first-token greedy refusal proxy (greedy first token is a
refusal opening) on harmful/harmless dev and harmless KL under (i) MARS as shipped (traversal to t = 1,
ramp 1 - tau) and (ii) a hard gate with traversal to t = 3.
Run: PYTHONPATH=. python research/layer_table.py   -> research/results/layer_table.json (+ markdown)
"""

import math

import torch

from research import common as C
from research import dose as D
from steerpeft.evaluation.judge import is_refusal
from steerpeft.selectors.scores import auroc


def cp_upper(k: int, n: int, conf: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a rate with k events in n trials."""
    if k >= n:
        return 1.0
    from scipy.stats import beta
    return float(beta.ppf(conf, k + 1, n - k))


def n_needed(limit: float = 0.05, k: int = 0, conf: float = 0.95) -> int:
    """Smallest n whose one-sided CP upper bound with k events is <= limit."""
    n = k + 1
    while cp_upper(k, n, conf) > limit:
        n += 1
    return n


def judged(name):
    import json
    return torch.tensor([is_refusal(t) for t in json.loads((C.ROOT / "results" / f"texts_unsteered_{name}.json").read_text())])


def effect(layer, tau, ramp, target):
    tab = D.load(layer)
    reg, _ = C.region(layer)
    out = {}
    for group, names in C.DEV.items():
        greedy, kls = [], []
        for n in names:
            t = reg.t(C.states(n, layer))
            w = ramp if ramp is not None else max(1 - tau, 1e-6)
            g = (t > tau).float() if w == 0 else ((t - tau) / w).clamp(0, 1)
            dt = g * torch.relu(target - t)
            greedy.append(D.interp(tab, n, dt, "greedy"))
            kls.append(D.interp(tab, n, dt, "kl"))
        out[group] = float(torch.cat(greedy).mean())
        if group == "harmless":
            out["kl"] = float(torch.cat(kls).mean())
    return out


def main(layers=range(24)):
    rows = []
    refused = {n: judged(n) for n in ("val_harmful", "hb_dev")}
    for layer in layers:
        reg, _ = C.region(layer)
        t = {name: reg.t(C.states(name, layer)) for name in C.prompt_sets()}
        tau = C.tau_of(reg, layer)
        check = t["val_harmless"][1::2]
        k = int((check > tau).sum())
        tau_conf = float(t["val_harmless"].max())
        harmful_dev = torch.cat([t["val_harmful"], t["hb_dev"]])
        ref = torch.cat([refused["val_harmful"], refused["hb_dev"]])
        row = {
            "layer": layer, "candidate": 5 <= layer < 19,
            "auroc_val": auroc(t["val_harmful"], t["val_harmless"]), "auroc_ext": auroc(t["hb_dev"], t["ba_dev"]),
            "tau": tau, "degenerate": tau >= 1.0,
            "ft_check": k / len(check), "ft_check_cp95": cp_upper(k, len(check)),
            "ft_ba_dev": float((t["ba_dev"] > tau).float().mean()),
            "recall_val": float((t["val_harmful"] > tau).float().mean()),
            "recall_hb": float((t["hb_dev"] > tau).float().mean()),
            "ceiling_dev": float(((harmful_dev > tau) | ref).float().mean()),
            "t_refused_fit": float(t["fit_harmful"][C.refused_rows()].mean()),
            "tau_conformal": tau_conf, "recall_dev_conformal": float((harmful_dev > tau_conf).float().mean()),
            "ft_ba_dev_conformal": float((t["ba_dev"] > tau_conf).float().mean()),
        }
        if (C.CACHE / f"dose_L{layer}.pt").exists():
            row["shipped"] = effect(layer, tau, None, 1.0)
            row["far3_hard"] = effect(layer, tau, 0.0, 3.0)
        rows.append(row)
    sizes = {f"k={k}": n_needed(0.05, k) for k in range(3)}
    C.save_json("layer_table.json", {"rows": rows, "check_set_size_for_5pct_cp95": sizes})
    f = lambda v: f"{v:.2f}"
    lines = ["| layer | AUROC val | AUROC ext | tau | degenerate | false trig. check (18) [CP95 upper] | false trig. BA dev | recall val / HB dev | gate ceiling dev | t refused fit | shipped: harmful / harmless / KL | hard gate, T=3: harmful / harmless / KL |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        eff = lambda e: "-" if e is None else f"{f(e['harmful'])} / {f(e['harmless'])} / {e['kl']:.3f}"
        lines.append(f"| {r['layer']}{'' if r['candidate'] else '*'} | {f(r['auroc_val'])} | {f(r['auroc_ext'])} | {r['tau']:.3f} | "
                     f"{'yes' if r['degenerate'] else 'no'} | {f(r['ft_check'])} [{f(r['ft_check_cp95'])}] | {f(r['ft_ba_dev'])} | "
                     f"{f(r['recall_val'])} / {f(r['recall_hb'])} | {f(r['ceiling_dev'])} | {f(r['t_refused_fit'])} | "
                     f"{eff(r.get('shipped'))} | {eff(r.get('far3_hard'))} |")
    (C.ROOT / "results" / "layer_table.md").write_text("\n".join(lines) + f"\n\nCheck-set size for a 5% limit (CP95): {sizes}\n")
    print("\n".join(lines))
    print(sizes)


if __name__ == "__main__":
    main()
