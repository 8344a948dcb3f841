"""Dose-response tables: first-token refusal score (and KL on harmless sets) of every prompt when its
decision-position state at one layer is moved by `dt` spans along u (h' = h + dt * s_l * u_l), for a grid
of dt.  Any single-layer, decision-position MARS variant (gate, ramp, target, beta/rho) gives each row a
dt, so its first-token outcome is read off these tables (linear interpolation between grid points) with no
new forward pass.  Finalists are re-run with real plans (research/mars_options.py).

The dose is added by a plain forward hook (measurement only); `check()` shows it equals the package-path
plan (OptionScaler) on one batch.
Run: PYTHONPATH=. python research/dose.py 12 13 14 15 16 17 18 19 20   -> research/cache/dose_L<layer>.pt
"""

import sys
import time

import torch

from research import common as C

DOSES = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0]
SETS = ("fit_harmful", "val_harmful", "val_harmless", "hb_dev", "ba_dev")


def _expanded(prefix, k):
    batch = {"input_ids": prefix.ids.repeat(k, 1), "attention_mask": prefix.mask.repeat(k, 1)}
    kv = [(key.repeat(k, 1, 1, 1), value.repeat(k, 1, 1, 1)) for key, value in prefix.kv()]
    return C.Prefix(prefix.model, batch, kv)


@torch.no_grad()
def table(layer: int, names=SETS, doses=DOSES, harmful: str = "all"):
    model, _ = C.load()
    reg, _ = C.region(layer, harmful=harmful)
    unit = reg.unit
    state = {}

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, -1] += state["a"][:, None] * unit
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = model.model.layers[layer].register_forward_hook(hook)
    out = {"doses": doses, "span": reg.span, "p_minus": reg.p_minus, "layer": layer, "harmful": harmful}
    try:
        for name in names:
            scores, kls, tops = [], [], []
            for prefix in C.prefixes(name):
                b, k = prefix.ids.shape[0], len(doses)
                big = _expanded(prefix, k)
                state["a"] = torch.tensor(doses).repeat_interleave(b) * reg.span  # dose-major
                logits, _, _ = big.run(1)
                score = C.refusal_score(logits).view(k, b).T
                base = logits.view(k, b, -1)[0]
                kl = torch.stack([C.kl(base, logits.view(k, b, -1)[j]) for j in range(k)], dim=1)
                scores.append(score)
                kls.append(kl)
                tops.append(logits.argmax(-1).view(k, b).T)
            out[name] = {"score": torch.cat(scores), "kl": torch.cat(kls), "top": torch.cat(tops)}
    finally:
        handle.remove()
    return out


def load(layer: int, harmful: str = "all"):
    suffix = "" if harmful == "all" else f"_{harmful}"
    return torch.load(C.CACHE / f"dose_L{layer}{suffix}.pt")


_R = None


def refusal_flags(top: torch.Tensor) -> torch.Tensor:
    """Greedy first token is a refusal opening (agrees with the keyword judge on 48-token answers on 55/55
    fit harmful and 34/37 validation harmful prompts, against 43/55 and 25/37 for log-odds > 0)."""
    global _R
    if _R is None:
        from steerpeft.evaluation.first_token import refusal_token_ids

        _R = torch.tensor(refusal_token_ids(C.load()[1]))
    return torch.isin(top, _R).float()


def interp(tab, name: str, dt: torch.Tensor, what: str = "score") -> torch.Tensor:
    """Per-row value at dose dt (clamped to the grid); what = score, kl or greedy (refusal-opening flag,
    linearly interpolated between grid points, so a fraction)."""
    grid = torch.tensor(tab["doses"])
    values = refusal_flags(tab[name]["top"]) if what == "greedy" else tab[name][what]
    dt = dt.clamp(grid[0], grid[-1])
    hi = torch.searchsorted(grid, dt).clamp(1, len(grid) - 1)
    lo = hi - 1
    w = (dt - grid[lo]) / (grid[hi] - grid[lo])
    rows = torch.arange(len(dt))
    return values[rows, lo] * (1 - w) + values[rows, hi] * w


def main(layers, harmful="all"):
    for layer in layers:
        t0 = time.time()
        tab = table(layer, harmful=harmful)
        suffix = "" if harmful == "all" else f"_{harmful}"
        torch.save(tab, C.CACHE / f"dose_L{layer}{suffix}.pt")
        summary = {n: [round(float((tab[n]["score"][:, j] > 0).float().mean()), 2) for j in range(len(DOSES))] for n in SETS}
        C.log(f"layer {layer} ({time.time() - t0:.0f}s) proxy refusal by dose {DOSES}: {summary}")


if __name__ == "__main__":
    args = sys.argv[1:]
    harmful = "all"
    if args and not args[0].isdigit():
        harmful = args.pop(0)
    main([int(a) for a in args], harmful)


def check(layer: int = 16, dt: float = 1.5) -> None:
    """The hook dose equals an OptionScaler plan (beta form, gate always open, rho = dt) on one batch."""
    from research.mars_options import OptionScaler, build_plan

    reg, raw = C.region(layer)
    scaler = OptionScaler(gate_layers=[layer], gate_regions={layer: reg}, regions={layer: reg}, tau=-1e6, ramp=0.0,
                          form="beta", beta=1.0, rho=dt)
    prefix = C.prefixes("val_harmful")[0]
    with build_plan(scaler, {layer: raw}).apply(C.load()[0]):
        logits, _, _ = prefix.run(1)
    tab = table(layer, names=("val_harmful",), doses=[0.0, dt])
    plan_score = C.refusal_score(logits)
    print("max |score(plan) - score(hook)|:", float((plan_score - tab["val_harmful"]["score"][:len(plan_score), 1]).abs().max()))
