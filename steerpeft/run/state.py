"""What a run carries from stage to stage, and what it hands back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerpeft.evaluation import EvalReport
from steerpeft.plan import Plan
from steerpeft.report.terminal import summary_table


@dataclass
class RunState:
    """The run so far: the stages after the evaluation (export, report) read and fill it in.

    `prompts` are the evaluation's harmful and harmless prompts; `adapter` is the export's status
    (`{"status": "exported" | "skipped" | "failed" | ..., ...}`); `metrics` and `files` are set by
    the report stage.
    """

    out_dir: Path
    name: str
    recipe: dict[str, Any]
    model: Any
    processor: Any
    plan: Plan | None
    report: EvalReport | None
    gate: dict[str, Any] | None
    model_record: dict[str, Any]
    prompts: dict[str, list[str]]
    prompt_source: str
    eval_record: dict[str, Any]
    command: str
    started: float
    timings: dict[str, float] = field(default_factory=dict)
    preflight: dict[str, Any] | None = None
    adapter: dict[str, Any] = field(
        default_factory=lambda: {"status": "skipped", "message": "export switched off"}
    )
    adapter_dir: Path | None = None
    files_record: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class RunResult:
    """What a run produced: the folder, the plan, the evaluation and the metrics record."""

    out_dir: Path
    plan: Plan | None
    metrics: dict[str, Any]
    report: EvalReport | None = None
    adapter_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        """The plain-text summary `steerpeft run` prints: chosen layer, tau, refusal before/after, KL,
        folder."""
        return summary_table(self.metrics, str(self.out_dir))
