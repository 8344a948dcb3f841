"""Issue 14 (d): per-layer gate statistics and effects of MARS as shipped (first-token proxy).

Per layer: AUROC of t (built-in validation split; HarmBench dev vs benign-anchors dev), calibrated tau
(95th percentile of t on the calibration half of the held-out harmless prompts), false triggers on the check
half (18 prompts; with a one-sided 95% Clopper-Pearson upper bound) and on benign-anchors dev (25), gate
recall on harmful dev, t of the refused fit centroid, and with forward passes (decision position only):
proxy refusal (first-token log-odds > 0) on harmful dev for MARS as shipped and for a forced full push
(gate open on every row) to t = 1 and to the refused centroid; KL on harmless dev under MARS as shipped.
Run: PYTHONPATH=. python research/layer_table.py   -> research/results/layer_table.json
"""

import torch

from research import common as C
from research.mars_options import OptionScaler, build_plan
from steerpeft.selectors.scores import auroc


def cp_upper(k: int, n: int, conf: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a rate with k successes in n."""
    if k >= n:
        return 1.0
    from scipy.stats import beta
    return float(beta.ppf(conf, k + 1, n - k))


def proxy(name, plan_factory):
    logits, _, _ = C.run_set(name, plan_factory)
    return logits


def main(layers=range(5, 19), effects=True):
    base = C.baseline()
    rows = []
    for layer in layers:
        reg, raw = C.region(layer)
        t = {name: reg.t(C.states(name, layer)) for name in C.prompt_sets()}
        tau = C.tau_of(reg, layer)
        check = t["val_harmless"][1::2]
        k = int((check > tau).sum())
        refused_t = float(t["fit_harmful"][C.refused_rows()].mean())
        row = {
            "layer": layer, "auroc_val": auroc(t["val_harmful"], t["val_harmless"]),
            "auroc_dev_ext": auroc(t["hb_dev"], t["ba_dev"]), "tau": tau, "degenerate": tau >= 1.0,
            "false_trigger_check": k / len(check), "false_trigger_check_cp95": cp_upper(k, len(check)),
            "false_trigger_ba_dev": float((t["ba_dev"] > tau).float().mean()),
            "recall_val_harmful": float((t["val_harmful"] > tau).float().mean()),
            "recall_hb_dev": float((t["hb_dev"] > tau).float().mean()),
            "t_hb_dev_mean": float(t["hb_dev"].mean()), "t_refused_fit": refused_t,
            "span": reg.span,
        }
        if effects:
            directions = {layer: raw}
            def plan(target=1.0, forced=False):
                r = C.region(layer, target=target)[0]
                s = OptionScaler(gate_layers=[layer], gate_regions={layer: r}, regions={layer: r},
                                 tau=-1e9 if forced else tau, ramp=0.0 if forced else None)
                return lambda: build_plan(s, directions)
            for cond, factory in (("mars", plan()), ("push1", plan(1.0, True)), ("pushR", plan("refused", True))):
                scores = torch.cat([C.refusal_score(proxy(n, factory)) for n in C.DEV["harmful"]])
                row[f"proxy_harmful_dev_{cond}"] = float((scores > 0).float().mean())
            logits = [proxy(n, plan()) for n in C.DEV["harmless"]]
            kls = torch.cat([C.kl(base[n]["logits"], lg) for n, lg in zip(C.DEV["harmless"], logits)])
            row["kl_harmless_dev_mars"] = float(kls.mean())
            row["proxy_harmless_dev_mars"] = float((torch.cat([C.refusal_score(l) for l in logits]) > 0).float().mean())
        rows.append(row)
        C.log({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})
    unsteered = torch.cat([base[n]["score"] for n in C.DEV["harmful"]])
    C.save_json("layer_table.json", {"unsteered_proxy_harmful_dev": float((unsteered > 0).float().mean()),
                                     "unsteered_proxy_harmless_dev": float((torch.cat([base[n]["score"] for n in C.DEV["harmless"]]) > 0).float().mean()),
                                     "rows": rows})


if __name__ == "__main__":
    main()
