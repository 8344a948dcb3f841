"""Does another text-only gate direction raise the gate's recall at the same calibrated threshold?
Compares, per layer, the diff-means u (MARS) with an L2 logistic probe fitted on the same training split
(own implementation of the same idea as steerpeft's `probe` extractor), and with the diff-means of the
refused fit prompts.  tau = 95th percentile of the calibration half; recall on val harmful + HarmBench dev;
false triggers on the check half + benign-anchors dev.  Offline, no forward passes.
Run: PYTHONPATH=. python research/gate_directions.py"""

import torch

from research import common as C
from steerpeft.selectors.scores import auroc


def probe_unit(layer, l2):
    pos, neg = C.states("fit_harmful", layer).double(), C.states("fit_harmless", layer).double()
    x = torch.cat([pos, neg]); y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    d = (w.detach() / std).float()
    return d / d.norm()


def stats(unit, layer):
    proj = {n: C.states(n, layer) @ unit for n in ("val_harmful", "hb_dev", "val_harmless", "ba_dev")}
    cal = proj["val_harmless"][0::2].double()
    tau = float(torch.quantile(cal, 0.95))
    harmful = torch.cat([proj["val_harmful"], proj["hb_dev"]])
    harmless = torch.cat([proj["val_harmless"][1::2], proj["ba_dev"]])
    return (f"AUROC ext {auroc(proj['hb_dev'], proj['ba_dev']):.3f} recall {float((harmful > tau).float().mean()):.2f} "
            f"false trig {float((harmless > tau).float().mean()):.2f}")


def main():
    for layer in (14, 15, 16, 17, 18):
        u = C.region(layer)[0].unit
        ur = C.region(layer, "refused")[0].unit
        lines = [f"L{layer} diff-means: {stats(u, layer)}", f"      refused diff-means: {stats(ur, layer)}"]
        for l2 in (1e-3, 1e-2, 1e-1):
            lines.append(f"      probe l2={l2}: {stats(probe_unit(layer, l2), layer)}")
        C.log("\n".join(lines))


if __name__ == "__main__":
    main()
