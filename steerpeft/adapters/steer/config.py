"""`SteerConfig`: a STEER adapter's `adapter_config.json`, a steerpeft plan without its tensors."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import PeftConfig

from steerpeft.errors import AdapterError
from steerpeft.formats import PLAN_FORMAT, is_plan_format
from steerpeft.plan import check_plan_config


@dataclass
class SteerConfig(PeftConfig):
    """Configuration of a STEER adapter: a steerpeft plan without its tensors, plus a tensor manifest.

    `plan` is `Plan.save`'s JSON (format, model, steps, metadata).  `tensors` lists every plan
    tensor as `{"key": "steps.0.direction.3", "host": 3, "shape": [576]}`: `host` is the decoder
    layer (or -1, the embedding) whose `steerpeft` child stores it.
    """

    plan: dict = field(
        default_factory=dict, metadata={"help": "steerpeft plan config (Plan.save's plan.json)."}
    )
    tensors: list = field(
        default_factory=list, metadata={"help": "Manifest of the plan tensors: key, host, shape."}
    )
    steerpeft_version: str | None = field(
        default=None, metadata={"help": "steerpeft version that wrote the adapter."}
    )
    steerkit_version: str | None = field(default=None, metadata={"help": "Set in adapters written before the "
                                                                          "rename to steerpeft; read only."})

    def __post_init__(self) -> None:
        super().__post_init__()
        from peft.utils import PeftType

        steer = getattr(PeftType, "STEER", None)
        if steer is None:
            raise AdapterError("The STEER PEFT method is not registered: import steerpeft first.")
        self.peft_type = steer
        if not isinstance(self.plan, dict) or not is_plan_format(self.plan.get("format")):
            raise AdapterError(
                f"This STEER adapter config holds no steerpeft plan (format {PLAN_FORMAT!r} expected): the "
                "file is corrupt or was written by an incompatible steerpeft version."
            )
        for entry in self.tensors:
            if not isinstance(entry, dict) or not {"key", "host", "shape"} <= set(entry):
                raise AdapterError(
                    f"STEER tensor manifest entry {entry!r} is malformed: the config is corrupt."
                )
        # Every step must build now, from registered names only: a bad adapter is refused at load,
        # before PEFT injects anything, never at the model's first forward.
        check_plan_config(self.plan, "STEER adapter")
