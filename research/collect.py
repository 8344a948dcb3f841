"""Collect research/results/eval_*.json and baseline.json into markdown tables (dev and test).
Run: PYTHONPATH=. python research/collect.py  -> research/results/options_table.md"""

import json

from research import common as C


def fmt_cfg(cfg):
    keys = ("gate_layers", "steer_layers", "q", "ramp", "form", "target", "beta", "rho", "hold", "harmful")
    base = {"steer_layers": None, "ramp": None, "hold": 0, "harmful": "all"}
    parts = []
    for k in keys:
        v = cfg.get(k)
        if k in base and v == base[k]:
            continue
        if cfg.get("form") == "beta" and k == "target":
            continue
        if cfg.get("form") == "traversal" and k in ("beta", "rho"):
            continue
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def unsteered(split):
    base = json.loads((C.ROOT / "results" / "baseline.json").read_text())
    groups = C.DEV if split == "dev" else C.TEST
    out = {}
    for group, names in groups.items():
        n = sum(base[s]["n"] for s in names)
        out[group] = sum(base[s]["judged_refusal_count"] for s in names) / n
        out[group + "_parts"] = " / ".join(f"{base[s]['judged_refusal_count']}/{base[s]['n']}" for s in names)
    return out


def main():
    lines = []
    for split in ("dev", "test"):
        groups = C.DEV if split == "dev" else C.TEST
        u = unsteered(split)
        lines += [f"\n### {split}: harmful = {' + '.join(groups['harmful'])}, harmless = {' + '.join(groups['harmless'])}\n",
                  "| config | parameters | harmful refused (judged) | harmless refused (judged) | rise (points) | harmless KL | gate open harmful / harmless | greedy first-token proxy harmful / harmless |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| unsteered | - | {u['harmful']:.3f} ({u['harmful_parts']}) | {u['harmless']:.3f} ({u['harmless_parts']}) | 0 | 0 | - | - |"]
        for path in sorted((C.ROOT / "results").glob(f"eval_*_{split}.json"), key=lambda p: p.stat().st_mtime):
            r = json.loads(path.read_text())
            name = path.stem[len("eval_"):-len(f"_{split}")]
            h, b = r["harmful"], r["harmless"]
            parts = lambda g: " / ".join(f"{r['sets'][s].get('refusals', '-')}/{r['sets'][s]['n']}" for s in groups[g])
            if "refusal" in h:
                judged_h, judged_b = f"{h['refusal']:.3f} ({parts('harmful')})", f"{b['refusal']:.3f} ({parts('harmless')})"
                rise = f"{100 * (b['refusal'] - u['harmless']):+.1f}"
            else:
                judged_h = judged_b = rise = "(not generated)"
            lines.append(f"| {name} | {fmt_cfg(r['config'])}; tau={r['tau']:.3f} | {judged_h} | {judged_b} | {rise} | {b['kl']:.4f} | "
                         f"{h['gate_open']:.2f} / {b['gate_open']:.2f} | {h['greedy_proxy']:.3f} / {b['greedy_proxy']:.3f} |")
    text = "\n".join(lines) + "\n"
    (C.ROOT / "results" / "options_table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
