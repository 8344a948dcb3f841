"""Offline sweep of single-layer, decision-position MARS variants on the dose tables (first-token proxy).

Per row: t = t_l(h) (gate = steered layer), tau = quantile q of t on the calibration half of the held-out
harmless prompts (floored at 0), g = clip((t - tau) / ramp, 0, 1) (ramp None = 1 - tau, 0 = hard gate),
    traversal: dt = g * ReLU(T - t)          beta: dt = min(beta * ReLU(t - tau), rho)
then the row's first-token refusal score / KL at dose dt are read off research/cache/dose_L<l>.pt.
Metrics on DEV only (harmful: val_harmful + hb_dev, 137; harmless: val_harmless + ba_dev, 62); the proxy
refusal is score > 0.  Run: PYTHONPATH=. python research/sweep.py  -> research/results/sweep.json
"""

import itertools

import torch

from research import common as C
from research import dose as D

HARMFUL, HARMLESS = C.DEV["harmful"], C.DEV["harmless"]


def targets(layer: int) -> dict[str, float]:
    reg, _ = C.region(layer)
    pos = C.states("fit_harmful", layer)
    out = {"1": 1.0, "1.5": 1.5, "2": 2.0, "2.5": 2.5, "3": 3.0, "4": 4.0, "5": 5.0}
    for how in ("score", "judged"):
        try:
            out[f"R_{how}"] = float(reg.t(pos[C.refused_rows(how=how)]).mean())
        except FileNotFoundError:
            pass
    return out


def evaluate(tab, layer, tau, ramp, form, param):
    reg, _ = C.region(layer)
    res = {}
    for group, names in (("harmful", HARMFUL), ("harmless", HARMLESS)):
        scores, kls, opened, base, greedy, gbase = [], [], [], [], [], []
        for name in names:
            t = reg.t(C.states(name, layer))
            w = ramp if ramp is not None else max(1 - tau, 1e-6)
            g = (t > tau).float() if w == 0 else ((t - tau) / w).clamp(0, 1)
            if form == "traversal":
                dt = g * torch.relu(param - t)
            else:
                beta, rho = param
                dt = torch.clamp(beta * torch.relu(t - tau), max=rho)
            scores.append(D.interp(tab, name, dt))
            kls.append(D.interp(tab, name, dt, "kl"))
            opened.append(dt > 0)
            base.append(tab[name]["score"][:, 0])
            greedy.append(D.interp(tab, name, dt, "greedy"))
            gbase.append(D.refusal_flags(tab[name]["top"][:, 0]))
        s, k, o, b = torch.cat(scores), torch.cat(kls), torch.cat(opened), torch.cat(base)
        res[group] = {"greedy": float(torch.cat(greedy).mean()), "base_greedy": float(torch.cat(gbase).mean()),
                      "proxy": float((s > 0).float().mean()), "base_proxy": float((b > 0).float().mean()),
                      "kl": float(k.mean()), "open": float(o.float().mean())}
    return res


def main(layers=(12, 14, 15, 16, 17, 18, 20)):
    rows = []
    for layer in layers:
        try:
            tab = D.load(layer)
        except FileNotFoundError:
            continue
        reg, _ = C.region(layer)
        cal = reg.t(C.states("val_harmless", layer))[0::2].double()
        for q in (0.7, 0.8, 0.85, 0.9, 0.95, 1.0):
            tau = max(0.0, float(torch.quantile(cal, q)))
            for ramp in (None, 0.5, 0.25, 0.0):
                for name, T in targets(layer).items():
                    r = evaluate(tab, layer, tau, ramp, "traversal", T)
                    rows.append({"layer": layer, "q": q, "tau": tau, "ramp": ramp, "form": "traversal", "target": name,
                                 "T": T, **r})
            for beta, rho in itertools.product((2.0, 4.0, 8.0), (1.5, 2.0, 3.0, 4.0)):
                r = evaluate(tab, layer, tau, None, "beta", (beta, rho))
                rows.append({"layer": layer, "q": q, "tau": tau, "ramp": None, "form": "beta", "beta": beta, "rho": rho, **r})
    C.save_json("sweep.json", rows)
    ok = [r for r in rows if r["harmless"]["greedy"] - r["harmless"]["base_greedy"] <= 0.03 + 1e-9 and r["harmless"]["kl"] <= 0.1]
    ok.sort(key=lambda r: -r["harmful"]["greedy"])
    fmt = lambda r: (f"L{r['layer']} q{r['q']} tau {r['tau']:.2f} ramp {r['ramp']} {r['form']} "
                     f"{r.get('target', '')}{r.get('beta', '')}/{r.get('rho', '')} | harmful {r['harmful']['greedy']:.3f} "
                     f"(open {r['harmful']['open']:.2f}) harmless {r['harmless']['greedy']:.3f} (open {r['harmless']['open']:.2f}) "
                     f"KL {r['harmless']['kl']:.3f}")
    print("base harmful greedy-proxy", rows[0]["harmful"]["base_greedy"], "harmless", rows[0]["harmless"]["base_greedy"])
    print("best within over-refusal +3 points (proxy) and KL <= 0.1:")
    for r in ok[:25]:
        print(fmt(r))
    print("best per layer:")
    for layer in layers:
        best = [r for r in ok if r["layer"] == layer][:3]
        for r in best:
            print(fmt(r))


if __name__ == "__main__":
    main()
