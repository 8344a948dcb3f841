"""Option (a), behavioural form: where along u does the model refuse?  T_fit(p) = the smallest T on a grid
(step 0.25 spans) such that clamping the decision state of the *fit* harmful prompts up to t = T
(h' = h + ReLU(T - t) * s * u) makes at least a share p of them open greedily with a refusal token.
Fit prompts only; read from the dose tables (fit_harmful rows), i.e. one single-token forward per grid
point in a package implementation.  Also prints the refused-centroid targets (t of the centroid of the fit
harmful prompts the model refuses: first-token score > 0, or keyword judge).
Then, per layer, the selection view on the validation split only: greedy refusal proxy on val harmful /
val harmless and KL under the hard gate at the calibrated tau with traversal to T_fit(0.95).
Run: PYTHONPATH=. python research/fit_target.py
"""

import torch

from research import common as C
from research import dose as D


def fit_target(layer: int, share: float = 0.95, grid=None) -> float:
    grid = grid if grid is not None else [1.0 + 0.25 * i for i in range(17)]
    tab = D.load(layer)
    reg, _ = C.region(layer)
    t = reg.t(C.states("fit_harmful", layer))
    for T in grid:
        if float(D.interp(tab, "fit_harmful", torch.relu(T - t), "greedy").mean()) >= share:
            return T
    return grid[-1]


def main():
    out = {}
    for layer in (12, 13, 14, 15, 16, 17, 18, 20):
        reg, _ = C.region(layer)
        pos = C.states("fit_harmful", layer)
        out[layer] = {f"T_fit({p})": fit_target(layer, p) for p in (0.8, 0.9, 0.95, 1.0)}
        out[layer]["T_refused_score"] = float(reg.t(pos[C.refused_rows(how="score")]).mean())
        out[layer]["T_refused_judged"] = float(reg.t(pos[C.refused_rows(how="judged")]).mean())
        # selection view (validation split only): hard gate at the calibrated tau, traversal to T_fit(0.95)
        T, tau = out[layer]["T_fit(0.95)"], C.tau_of(reg, layer)
        tab = D.load(layer)
        for name in ("val_harmful", "val_harmless"):
            t = reg.t(C.states(name, layer))
            dt = (t > tau).float() * torch.relu(T - t)
            out[layer][f"{name}_greedy_refusal"] = float(D.interp(tab, name, dt, "greedy").mean())
            out[layer][f"{name}_greedy_unsteered"] = float(D.refusal_flags(tab[name]["top"][:, 0]).mean())
            if name == "val_harmless":
                out[layer]["val_harmless_kl"] = float(D.interp(tab, name, dt, "kl").mean())
        out[layer]["tau"], out[layer]["degenerate"] = tau, tau >= 1.0
        C.log(layer, {k: round(v, 3) if isinstance(v, float) else v for k, v in out[layer].items()})
    C.save_json("fit_target.json", out)


if __name__ == "__main__":
    main()
