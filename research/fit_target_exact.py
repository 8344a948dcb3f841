"""T_fit(0.95) with real plans (no interpolation): for T on the grid, clamp every fit harmful prompt's
decision state up to t = T at the layer (gate forced open) and count greedy refusal openings.
Run: PYTHONPATH=. python research/fit_target_exact.py 15 16"""

import sys

from research import common as C
from research import dose as D
from research.mars_options import OptionScaler, build_plan


def share(layer: int, T: float) -> float:
    reg, raw = C.region(layer, target=T)
    scaler = OptionScaler(gate_layers=[layer], gate_regions={layer: reg}, regions={layer: reg}, tau=-1e6, ramp=0.0)
    logits, _, _ = C.run_set("fit_harmful", lambda: build_plan(scaler, {layer: raw}))
    return float(D.refusal_flags(logits.argmax(-1)).mean())


if __name__ == "__main__":
    for layer in [int(a) for a in sys.argv[1:]]:
        grid = [1.0 + 0.25 * i for i in range(17)]
        for T in grid:
            s = share(layer, T)
            C.log(f"layer {layer} T {T}: share of fit harmful opening with a refusal {s:.3f}")
            if s >= 0.95:
                C.log(f"layer {layer}: T_fit(0.95) = {T}")
                break
