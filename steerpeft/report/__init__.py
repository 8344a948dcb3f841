"""Run reports: the metrics record, the markdown report, the plots and the terminal summary.

Everything a report shows comes from one JSON-ready dict (`metrics.json`), built by
`steerpeft.report.metrics`; `markdown`, `plots` and `terminal` only render it, so a
report can be re-rendered from a saved `metrics.json` without the model.
"""

from steerpeft.report.markdown import render_report
from steerpeft.report.metrics import RUN_FORMAT, build_metrics, gate_summary, selection_reason, versions
from steerpeft.report.plots import plot_gate, plot_layers, plot_refusal, plot_trade, render_plots
from steerpeft.report.terminal import summary_table, text_table

__all__ = [
    "RUN_FORMAT",
    "build_metrics",
    "gate_summary",
    "plot_gate",
    "plot_layers",
    "plot_refusal",
    "plot_trade",
    "render_plots",
    "render_report",
    "selection_reason",
    "summary_table",
    "text_table",
    "versions",
]
