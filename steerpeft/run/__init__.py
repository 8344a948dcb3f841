"""The main job and its parts: `run_recipe` (`steerpeft run`) and `evaluate_saved` (`steerpeft eval`).

- `job`: the run's lifecycle (load, fit, evaluate, then the export and report stages);
- `evaluation`: which prompts and inputs a run evaluates, and the gate values of MARS plans;
- `stages`: export and report, written as callbacks on `on_run_end`;
- `saved`: evaluating a saved plan, run folder or adapter;
- `folder`, `state`: the run folder, and what the stages pass along.
"""

from steerpeft.run.evaluation import eval_prompts, evaluate_plan, model_section
from steerpeft.run.folder import RUN_FILES, check_run_dir, default_run_dir, describe_path, say
from steerpeft.run.job import RunJob, load_recipe_model, run_recipe
from steerpeft.run.saved import applied_adapter, evaluate_saved
from steerpeft.run.stages import AdapterExport, ReportWriter, adapter_card, export_plan, write_outputs
from steerpeft.run.state import RunResult, RunState

__all__ = [
    "RUN_FILES",
    "AdapterExport",
    "ReportWriter",
    "RunJob",
    "RunResult",
    "RunState",
    "adapter_card",
    "applied_adapter",
    "check_run_dir",
    "default_run_dir",
    "describe_path",
    "eval_prompts",
    "evaluate_plan",
    "evaluate_saved",
    "export_plan",
    "load_recipe_model",
    "model_section",
    "run_recipe",
    "say",
    "write_outputs",
]
