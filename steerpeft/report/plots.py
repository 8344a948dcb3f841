"""The run report's plots, drawn from a metrics dict with matplotlib's Agg canvas.

- `plot_layers`: per-layer scores (separation, induce, KL, false-trigger; accuracy for
  sweeps), one panel each, limits dashed, the chosen layer marked in every panel;
- `plot_gate`: the gate value t per input set (harmful, harmless, neutral-media), tau
  marked, media sets also shown without re-centering;
- `plot_refusal`: refusal rate per set and condition (before / after / ablations).

Figures are built on `matplotlib.figure.Figure` with a `FigureCanvasAgg`, never through
pyplot: no global backend switch, no GUI, safe in threads.  PNGs are written atomically.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, PercentFormatter

CHOSEN_COLOUR = "#d62728"
TAU_COLOUR = "#d62728"
DPI = 120

# (key, panel label, limit key, limit reading, is a rate)
LAYER_PANELS: list[tuple[str, str, str | None, str, bool]] = [
    ("separation", "separation: AUROC of t, harmful vs harmless (higher is better)", None, "", False),
    ("accuracy", "accuracy: held-out, midpoint rule (higher is better)", None, "", True),
    ("bypass", "bypass: refusal log-odds on harmful prompts with the direction removed (lower is better)",
     None, "", False),
    ("induce",
     "induce: rise of the refusal log-odds when pushed to the harmful centroid (must exceed the limit)",
     "induce", "min", False),
    ("kl", "KL on harmless prompts: nats, first token, gated steering (lower is better)", "kl", "max", False),
    ("false_trigger",
     "false-trigger rate: held-out harmless inputs (text, neutral media) whose gate opens (lower is better)",
     "false_trigger", "max", True),
]

SET_COLOURS = {"harmful": "#c0392b", "harmless": "#2471a3"}
CONDITION_COLOURS = ["#7f7f7f", "#1f4e79", "#6fa8dc", "#f6b26b", "#93c47d", "#c27ba0", "#8e7cc3"]


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    """Render `figure` to PNG and move it into place atomically."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(buffer.getvalue())
        umask = os.umask(0o077)  # mkstemp makes the file private; give it the mode a plain open would
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def set_label(name: str) -> str:
    """"harmless/image" -> "harmless + neutral image"; "harmful/text" -> "harmful, text only"."""
    label, _, modality = name.partition("/")
    if modality in ("", "text"):
        return f"{label}, text only"
    return f"{label} + neutral {modality}"


# ---------------------------------------------------------------------------
# layers.png


def plot_layers(table: Sequence[Mapping[str, Any]], chosen: int | None, path: str | os.PathLike, *,
                limits: Mapping[str, float] | None = None, title: str = "Per-layer scores") -> Path:
    """One panel per score present in `table`, shared layer axis, chosen layer marked."""
    rows = sorted(table, key=lambda r: r["layer"])
    panels = [p for p in LAYER_PANELS if any(isinstance(r.get(p[0]), (int, float)) for r in rows)]
    if not rows or not panels:
        raise ValueError("plot_layers needs a per-layer table with at least one score column.")
    layers = [int(r["layer"]) for r in rows]
    gated = any("within_limits" in r for r in rows)
    figure = Figure(figsize=(9.0, 1.75 * len(panels) + 1.0), layout="constrained")
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (key, label, limit_key, reading, is_rate) in zip(axes, panels):
        values = [r.get(key) for r in rows]
        xs = [x for x, v in zip(layers, values) if v is not None]
        ys = [v for v in values if v is not None]
        ax.plot(xs, ys, color="#555555", linewidth=1.2, zorder=2)
        inside = [bool(r.get("within_limits", True)) for r, v in zip(rows, values) if v is not None]
        ax.scatter([x for x, ok in zip(xs, inside) if ok], [y for y, ok in zip(ys, inside) if ok],
                   s=34, color="#1f4e79", zorder=3)
        ax.scatter([x for x, ok in zip(xs, inside) if not ok], [y for y, ok in zip(ys, inside) if not ok],
                   s=34, facecolors="white", edgecolors="#888888", linewidths=1.2, zorder=3)
        if limits and limit_key in limits:
            limit = float(limits[limit_key])
            ax.axhline(limit, color="#888888", linestyle="--", linewidth=1.0, zorder=1)
            ax.annotate(f"limit {'>' if reading == 'min' else '<='} {limit * 100:g}%" if is_rate
                        else f"limit {'>' if reading == 'min' else '<='} {limit:g}",
                        xy=(1.0, limit), xycoords=("axes fraction", "data"), xytext=(4, 0),
                        textcoords="offset points", va="center", ha="left", fontsize=8, color="#555555")
        if chosen is not None and chosen in xs:
            ax.axvline(chosen, color=CHOSEN_COLOUR, linewidth=1.6, alpha=0.85, zorder=1)
            y = ys[xs.index(chosen)]
            ax.scatter([chosen], [y], s=120, marker="*", color=CHOSEN_COLOUR, zorder=4)
        if is_rate:
            ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 5, 10]))
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        else:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useMathText=True)
        if key == "separation":
            low = min([0.5, *ys])
            ax.set_ylim(low - 0.05, 1.04)
        ax.set_title(label, loc="left", fontsize=9)
        ax.grid(axis="y", color="#e5e5e5", linewidth=0.8)
        ax.tick_params(labelsize=8)
    axes[-1].set_xlabel("decoder layer", fontsize=9)
    axes[-1].set_xticks(layers if len(layers) <= 40 else layers[:: max(1, len(layers) // 20)])
    handles = [
        Line2D(
            [], [], marker="o", linestyle="", color="#1f4e79", label="within all limits" if gated else "layer"
        ),
        Line2D(
            [], [], color=CHOSEN_COLOUR, marker="*", markersize=10,
            label="chosen layer" if chosen is None else f"chosen layer ({chosen})",
        ),
    ]
    if gated:
        handles.insert(
            1,
            Line2D(
                [], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="#888888",
                label="outside a limit",
            ),
        )
    if limits:
        handles.append(Line2D([], [], color="#888888", linestyle="--", label="limit"))
    if chosen is not None:
        title = f"{title}: chosen layer {chosen}"
    figure.suptitle(title, fontsize=11)
    figure.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8.5, frameon=False)
    return _save(figure, path)


# ---------------------------------------------------------------------------
# trade.png


def plot_trade(table: Sequence[Mapping[str, Any]], chosen: int | None, path: str | os.PathLike, *,
               max_kl: float | None = None, title: str = "Refusal removed against harmless answers changed"
               ) -> Path:
    """Each candidate direction of a bypass table as a point (harmless KL, harmful refusal log-odds with
    it removed), the KL limit marked: the trade a user sets with `max_kl`, which the layer axis hides."""
    rows = [r for r in table if all(isinstance(r.get(key), (int, float)) for key in ("bypass", "kl"))]
    if not rows:
        raise ValueError("plot_trade needs a per-layer table with 'bypass' and 'kl' columns.")
    figure = Figure(figsize=(7.0, 4.6), layout="constrained")
    ax = figure.subplots()
    inside = [r for r in rows if r.get("within_limits", True)]
    outside = [r for r in rows if not r.get("within_limits", True)]
    ax.scatter([r["kl"] for r in inside], [r["bypass"] for r in inside], s=36, color="#1f4e79", zorder=3,
               label="within all limits")
    ax.scatter([r["kl"] for r in outside], [r["bypass"] for r in outside], s=36, facecolors="white",
               edgecolors="#888888", linewidths=1.2, zorder=3, label="outside a limit")
    for row in rows:
        ax.annotate(str(row["layer"]), (row["kl"], row["bypass"]), xytext=(4, 3), textcoords="offset points",
                    fontsize=7.5, color="#555555")
    best = next((r for r in rows if r["layer"] == chosen), None)
    if best is not None:
        ax.scatter([best["kl"]], [best["bypass"]], s=140, marker="*", color=CHOSEN_COLOUR, zorder=4,
                   label=f"chosen layer ({chosen})")
    if max_kl is not None:
        ax.axvline(max_kl, color="#888888", linestyle="--", linewidth=1.0, zorder=1,
                   label=f"KL limit {max_kl:g}")
    ax.set_xscale("symlog", linthresh=0.01)  # linear near 0, logarithmic past 0.01 nats
    ax.set_xlim(left=0.0, right=max(r["kl"] for r in rows) * 1.6 + 0.01)
    ax.set_xlabel("KL on harmless prompts with the direction removed (nats, first token; lower is better)",
                  fontsize=9)
    ax.set_ylabel("refusal log-odds on harmful prompts\nwith the direction removed (lower is better)",
                  fontsize=9)
    ax.grid(color="#e5e5e5", linewidth=0.8)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, frameon=False, loc="best")
    figure.suptitle(f"{title} (validation prompts, one point per candidate layer)", fontsize=10)
    return _save(figure, path)


# ---------------------------------------------------------------------------
# gate.png


def plot_gate(gate: Mapping[str, Any], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """t per input, one row per set (media sets also without re-centering), tau marked.

    `gate` is the metrics' gate section: {"layer", "tau", "sets": {name: {"recentered": summary,
    "raw": summary or None}}}, each summary holding the `values`.
    """
    import random

    tau = float(gate["tau"])
    entries: list[tuple[str, list[float], str, bool]] = []  # label, values, colour, faded
    for name, both in gate["sets"].items():
        kind = name.split("/", 1)[0]
        colour = SET_COLOURS.get(kind, "#444444")
        entries.append((set_label(name), list(both["recentered"]["values"]), colour, False))
        raw = both.get("raw")
        if raw is not None:
            entries.append((f"{set_label(name)}\n(no re-centering)", list(raw["values"]), colour, True))
    if not entries:
        raise ValueError("plot_gate needs at least one set of gate values.")
    figure = Figure(figsize=(9.0, 0.62 * len(entries) + 1.9), layout="constrained")
    ax = figure.subplots()
    rng = random.Random(0)
    every = [v for _, values, _, _ in entries for v in values] + [0.0, 1.0, tau]
    low, high = min(every), max(every)
    pad = 0.06 * (high - low or 1.0)
    ax.axvspan(tau, high + pad, color="#f4cccc", alpha=0.45, zorder=0, linewidth=0)
    for row, (label, values, colour, faded) in enumerate(entries):
        y = len(entries) - 1 - row
        jitter = [y + rng.uniform(-0.22, 0.22) for _ in values]
        if faded:
            ax.scatter(
                values, jitter, s=22, facecolors="white", edgecolors=colour, linewidths=1.0, alpha=0.8,
                zorder=3,
            )
        else:
            ax.scatter(values, jitter, s=22, color=colour, alpha=0.75, linewidths=0, zorder=3)
        if values:
            mean = sum(values) / len(values)
            above = sum(v > tau for v in values) / len(values)
            ax.plot([mean, mean], [y - 0.32, y + 0.32], color="black", linewidth=2.0, zorder=4)
            ax.annotate(
                f"mean {mean:.2f}\n{above:.0%} > \u03c4", xy=(1.0, y), xycoords=("axes fraction", "data"),
                xytext=(6, 0), textcoords="offset points", va="center", ha="left", fontsize=8,
            )
    ax.axvline(tau, color=TAU_COLOUR, linewidth=1.8, zorder=2)
    ax.axvline(0.0, color="#2471a3", linestyle=":", linewidth=1.2, zorder=1)
    ax.axvline(1.0, color="#c0392b", linestyle=":", linewidth=1.2, zorder=1)
    ax.annotate(
        f"\u03c4 = {tau:.3f}", xy=(tau, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 4),
        textcoords="offset points", ha="center", va="bottom", color=TAU_COLOUR, fontsize=9, fontweight="bold",
    )
    ax.set_yticks(range(len(entries)), [e[0] for e in reversed(entries)], fontsize=8.5)
    ax.set_ylim(-0.6, len(entries) - 0.4)
    ax.set_xlim(low - pad, high + pad)
    ax.set_xlabel(
        "gate value t  (0 = harmless centroid, 1 = harmful centroid; steering only where t > \u03c4)",
        fontsize=9,
    )
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.8)
    ax.tick_params(axis="x", labelsize=8)
    handles = [
        Line2D([], [], color=TAU_COLOUR, linewidth=1.8, label="\u03c4 (gate threshold)"),
        Line2D([], [], color="#2471a3", linestyle=":", label="harmless centroid (t = 0)"),
        Line2D([], [], color="#c0392b", linestyle=":", label="harmful centroid (t = 1)"),
        Line2D([], [], color="black", linewidth=2.0, label="mean"),
    ]
    if any(faded for *_, faded in entries):
        handles += [
            Line2D(
                [], [], marker="o", linestyle="", color="#555555", label="re-centred (what the gate sees)"
            ),
            Line2D(
                [], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="#555555",
                label="without re-centering",
            ),
        ]
    figure.legend(
        handles=handles, loc="outside lower center", ncol=min(len(handles), 3), fontsize=8, frameon=False
    )
    layer = gate.get("layer")
    figure.suptitle(title or f"Gate value t at layer {layer}, per input (decision position)", fontsize=11)
    return _save(figure, path)


# ---------------------------------------------------------------------------
# refusal.png


def plot_refusal(evaluation: Mapping[str, Any], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """One panel per modality; in each, harmful and harmless groups with one bar per condition (unsteered
    first)."""
    rows: dict[str, dict[str, Mapping[str, Any]]] = {}
    for row in evaluation["table"]:
        rows.setdefault(row["condition"], {})[row["set"]] = row
    conditions = list(evaluation["conditions"])
    sets = list(evaluation["sets"])
    modalities: list[str] = []
    for name in sets:
        modality = name.partition("/")[2] or "text"
        if modality not in modalities:
            modalities.append(modality)
    generated = bool(evaluation.get("generate", True))
    key = "refusal_rate" if generated else "first_token_score"
    width = 0.8 / len(conditions)
    figure = Figure(figsize=(9.0, 3.3 * len(modalities) + 1.0), layout="constrained")
    axes = figure.subplots(len(modalities), 1, squeeze=False, sharey=True)[:, 0]
    titles = {"text": "text only", "image": "text + neutral image", "video": "text + neutral video"}
    for ax, modality in zip(axes, modalities):
        groups = [name for name in sets if (name.partition("/")[2] or "text") == modality]
        for index, condition in enumerate(conditions):
            xs = [g + (index - (len(conditions) - 1) / 2) * width for g in range(len(groups))]
            values = [rows[condition][name][key] for name in groups]
            heights = [0.0 if v is None else v for v in values]
            colour = CONDITION_COLOURS[index % len(CONDITION_COLOURS)]
            bars = ax.bar(xs, heights, width=width * 0.92, color=colour, label=condition, zorder=2)
            for bar, value in zip(bars, values):
                text = "n/a" if value is None else (f"{value:.0%}" if generated else f"{value:.1f}")
                ax.annotate(text, xy=(bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 2),
                            textcoords="offset points", ha="center", va="bottom", fontsize=7.5)
        labels = ["harmful prompts\n(refusal: higher = safer)" if name.startswith("harmful")
                  else "harmless prompts\n(over-refusal: lower = better)" for name in groups]
        ax.set_xticks(range(len(groups)), labels, fontsize=8.5)
        ax.set_title(titles.get(modality, modality), loc="left", fontsize=9.5)
        if generated:
            ax.set_ylim(0, 1.12)
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
            ax.set_ylabel("refusal rate\n(keyword judge)", fontsize=9)
        else:
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_ylabel("first-token refusal\nlog-odds", fontsize=9)
        ax.grid(axis="y", color="#e5e5e5", linewidth=0.8, zorder=0)
        ax.tick_params(axis="y", labelsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=min(3, len(conditions)), fontsize=8.5,
                  frameon=False)
    n = rows[conditions[0]][sets[0]]["n"]
    what = "Refusal rate" if generated else "First-token refusal score"
    figure.suptitle(title or f"{what} before and after steering ({n} prompts per set)", fontsize=11)
    return _save(figure, path)


# ---------------------------------------------------------------------------
# All of them


def render_plots(metrics: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, str]:
    """Draw every plot the metrics support into `out_dir`; returns {name: file name}."""
    out = Path(out_dir)
    made: dict[str, str] = {}
    plan = metrics.get("plan") or {}
    main = next((s for s in plan.get("steps", []) if s.get("name") == plan.get("main_step")), None)
    if main and main.get("layer_scores"):
        plot_layers(
            main["layer_scores"], plan.get("chosen_layer"), out / "layers.png", limits=plan.get("limits"),
            title=f"Per-layer scores of step {main['name']!r} on validation prompts",
        )
        made["layers"] = "layers.png"
        if plan.get("selector") == "bypass":
            plot_trade(main["layer_scores"], plan.get("chosen_layer"), out / "trade.png",
                       max_kl=(plan.get("limits") or {}).get("kl"))
            made["trade"] = "trade.png"
    gate = metrics.get("gate")
    if gate and gate.get("sets"):
        plot_gate(gate, out / "gate.png")
        made["gate"] = "gate.png"
    evaluation = metrics.get("eval")
    if evaluation and evaluation.get("table"):
        plot_refusal(evaluation, out / "refusal.png")
        made["refusal"] = "refusal.png"
    return made
