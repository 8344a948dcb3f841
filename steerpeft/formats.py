"""Names written into files: plan, adapter and run formats, the STEER PEFT type, tensor key parts.

Kept apart from the code that reads and writes them, with no PEFT or torch import, so that
every reader (plans, the adapter loader, `info`, the STEER method) agrees on one spelling, and
the names a file written before the rename from `steerkit` carries stay readable.

New files carry the `steerpeft` names; the `LEGACY_*` names are accepted on load only.
"""

from __future__ import annotations

PLAN_FORMAT = "steerpeft-plan/1"
ADAPTER_FORMAT = "steerpeft-adapter/1"
RUN_FORMAT = "steerpeft-run/1"
LEGACY_PLAN_FORMATS = ("steerkit-plan/1",)
LEGACY_ADAPTER_FORMATS = ("steerkit-adapter/1",)
LEGACY_RUN_FORMATS = ("steerkit-run/1",)

META_FILE = "steerpeft.json"
"""Provenance written beside every exported adapter (stock tools ignore it)."""
LEGACY_META_FILES = ("steerkit.json",)

STEER_PEFT_TYPE = "STEER (load with steerpeft: pip install steerpeft, then import steerpeft)"
"""The `peft_type` value of STEER adapters.  PEFT indexes its config table with it before any of
our code runs, so without the package a user's only message is `KeyError: '<value>'`: the value
itself says what to install."""
LEGACY_STEER_PEFT_TYPES = ("STEER (load with steerkit: pip install steerkit, then import steerkit)",)

CHILD_NAME = "steerpeft"
"""Name of the storage child a STEER adapter adds to each host layer."""
TUNER_PREFIX = "steerpeft_"
TENSORS_ATTR = "steerpeft_tensors"
LEGACY_KEY_PARTS = (("steerkit", "steerkit_tensors"),)
"""(child name, tensors attribute) pairs of older STEER checkpoints' tensor keys."""


def is_plan_format(value: object) -> bool:
    return value == PLAN_FORMAT or value in LEGACY_PLAN_FORMATS


def is_steer_peft_type(value: object) -> bool:
    return value == STEER_PEFT_TYPE or value in LEGACY_STEER_PEFT_TYPES
