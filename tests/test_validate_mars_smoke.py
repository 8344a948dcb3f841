"""`benchmarks/validate_mars.py --smoke`: the validation script still runs end to end and writes its tables.

A tiny random Llama (no shared assets), a handful of built-in test prompts, 4 new tokens; the
report must hold the per-model table, the per-source table and the targets, and the reused-answer
path the MARS variants use must give `evaluate_plan`'s own answers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


def test_validate_mars_smoke(tmp_path: Path) -> None:
    import validate_mars

    threads = torch.get_num_threads()
    try:
        report = validate_mars.main(["--smoke", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    text = report.read_text()
    assert "## tiny random Llama (smoke)" in text and "## Targets" in text
    assert (
        "| condition | layer | tau | T | refusal harmful/text | refusal harmless/text | KL harmless/text |"
        in text
    )
    for label in ("unsteered", "MARS as shipped", "MARS as MARS.md writes it", "MARS, T = refused centroid",
                  "ablation row: no re-centering", "ablation row: fixed strength", "ablation row: all tokens",
                  "`ablation` recipe as shipped", "`ablation` recipe, max_kl 0.2",
                  "`ablation` recipe, Arditi et al.'s plain direction",
                  "`ablation` recipe, plain direction, max_kl 1.0"):
        assert f"| {label}" in text, label
    assert "Refusals per prompt source" in text and "Text, MARS: harmful refusal >= 0.85" in text
    assert "](results/tiny-llama/ablation-trade.png)" in text
    assert (tmp_path / "results" / "tiny-llama" / "ablation-trade.png").is_file()
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    rows = summary["tables"]["tiny-llama"]
    assert (
        rows["mars"]["sets"]["harmful/text"]["n"] == 6
        and rows["mars"]["sets"]["harmful/text"]["gate_open"] > 0
    )
    check = json.loads((tmp_path / "results" / "tiny-llama" / "check-reuse.json").read_text())
    assert check["same_texts"] and abs(check["kl_reused"] - check["kl_evaluate_plan"]) < 1e-6
