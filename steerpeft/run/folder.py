"""The run folder: where a run writes, and which existing folders it may overwrite."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from steerpeft.errors import AdapterError, ConfigError

PLOT_FILES = ("layers.png", "trade.png", "gate.png", "refusal.png")
"""Every plot a run may draw; a rerun into the folder removes those it does not redraw."""
RUN_FILES = ("plan", "adapter", "metrics.json", "metrics.jsonl", "report.md", "recipe.yaml", *PLOT_FILES)
"""What a run folder holds; a folder holding any of these counts as a run folder that may be overwritten."""


def say(progress: bool, message: str) -> None:
    """A progress line on stderr (stdout stays for results)."""
    if progress:
        print(message, file=sys.stderr, flush=True)


def default_run_dir(name: str) -> Path:
    """`runs/<name>-<YYYYmmdd-HHMMSS>` under the working directory."""
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_run_dir(path: str | os.PathLike) -> Path:
    """`path` as the run folder; refuses a file, or a non-empty folder that is not an earlier run folder."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"The run folder {out} exists and is a file; choose another --out.")
    if out.is_dir():
        entries = [p.name for p in out.iterdir() if not p.name.startswith(".")]
        if entries and not any(name in RUN_FILES for name in entries):
            raise ConfigError(f"The run folder {out} exists and holds other files "
                              f"({', '.join(sorted(entries)[:3])}...); choose an empty or new folder with "
                              "--out.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def describe_path(path: str | os.PathLike) -> tuple[str, Path]:
    """("plan" | "adapter" | "run", folder) for a saved plan, adapter or run folder."""
    folder = Path(path)
    if not folder.exists():
        raise AdapterError(f"{folder} does not exist.")
    if (folder / "plan.json").is_file():
        return "plan", folder
    if (folder / "adapter_config.json").is_file():
        return "adapter", folder
    if (folder / "plan" / "plan.json").is_file():
        return "run", folder
    raise AdapterError(f"{folder} is neither a steerpeft plan (plan.json), an adapter (adapter_config.json) "
                       "nor a run folder (plan/plan.json).")
