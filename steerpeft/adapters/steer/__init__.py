"""STEER: steerpeft plans as a native PEFT method, laid out as PEFT lays out its own methods.

`config.py` (the `adapter_config.json` dataclass), `layer.py` (the storage child), `runtime.py` (the
hooks while an adapter is on), `model.py` (the tuner), `payload.py` (what is stored, for export and
load); this module registers the method with PEFT when it is imported.

A weight delta cannot express input-dependent strengths (trust_region, conditional), position
restrictions (decision, first_generated, prompt, generated), ablation on post-norm models or
re-centering offsets.  STEER carries the plan itself: `adapter_config.json` holds the plan's JSON
config and a manifest of its tensors, `adapter_model.safetensors` the tensors.

How it sits in PEFT 0.21 (checked against its sources):

- PEFT's method list is closed (`register_peft_method` only accepts names already in the
  `PeftType` enum), so `register()` adds a `PeftType.STEER` member and fills the mapping tables
  itself.  It is idempotent and refuses PEFT versions outside `PEFT_RANGE`.  It runs when this
  module is imported, which `steerpeft.adapters` arranges for the moment PEFT is imported.
- The enum *value* written to `adapter_config.json` is `STEER_PEFT_TYPE`, a sentence that names
  steerpeft: PEFT reads `peft_type` and indexes its config table before any code of ours can run,
  so without steerpeft the only message a user sees is `KeyError: '<value>'`.  Making the value
  say "pip install steerpeft, then import steerpeft" is the one place that message can be shaped.
- Nothing is replaced.  Each decoder layer (or the embedding) that stores plan tensors gets a
  child `SteerLayer` named `steerpeft` holding them as buffers in `steerpeft_tensors[adapter]`; the
  steering itself is steerpeft's own `SteeringHandle` (forward hooks on the layers plus the
  session pre-hook), built from those buffers.  A LoRA loaded later still finds every module at
  its usual path.  `disable_adapter()`, `unload()` and `delete_adapter()` remove every hook.
- Tensor keys use the tuner prefix `steerpeft_` on the adapter-keyed container only
  (`...layers.3.steerpeft.steerpeft_tensors.steps__0__direction__3`): transformers' loader appends
  the adapter name after the segment that starts with the prefix, so exactly one segment may.
- Wrapping another `PeftModel` (a user's LoRA) is supported: the STEER tuner is then the outer
  model, `disable_adapter()` reaches the inner LoRA layers too, and `unload()` hands back the inner
  model.  Keys are written relative to the transformers model, so a STEER adapter saved from a
  stacked model loads on a plain one.
"""

from __future__ import annotations

import enum
import warnings

from steerpeft.adapters.steer.config import SteerConfig
from steerpeft.adapters.steer.layer import SteerLayer
from steerpeft.adapters.steer.model import SteerModel
from steerpeft.adapters.steer.payload import buffer_name, build_plan, canonical_key, host_path, steer_payload
from steerpeft.errors import AdapterError
from steerpeft.formats import CHILD_NAME, LEGACY_STEER_PEFT_TYPES, STEER_PEFT_TYPE, TENSORS_ATTR, TUNER_PREFIX

__all__ = [
    "CHILD_NAME",
    "PEFT_RANGE",
    "REGISTRATION_ERROR",
    "STEER_PEFT_TYPE",
    "TENSORS_ATTR",
    "TUNER_PREFIX",
    "SteerConfig",
    "SteerLayer",
    "SteerModel",
    "buffer_name",
    "build_plan",
    "canonical_key",
    "check_peft_version",
    "host_path",
    "register",
    "steer_payload",
]

PEFT_RANGE = ("0.21", "0.22")
"""Tested PEFT versions: >= first, < second.  The registration touches PEFT internals."""



def check_peft_version() -> str:
    """The installed PEFT version; AdapterError outside the tested range."""
    import peft
    from packaging.version import Version

    version = Version(peft.__version__)
    low, high = (Version(v) for v in PEFT_RANGE)
    if not low <= version < high:
        raise AdapterError(
            f"steerpeft's STEER adapters support peft>={PEFT_RANGE[0]},<{PEFT_RANGE[1]}, but peft "
            f"{peft.__version__} is installed. Install a supported version: pip install "
            f"'peft>={PEFT_RANGE[0]},<{PEFT_RANGE[1]}'. (Plain LoRA exports do not need steerpeft at all.)"
        )
    return peft.__version__


def _add_enum_member(enum_cls: type[enum.Enum], name: str, value: str) -> enum.Enum:
    """Add `name = value` to a str-mixin Enum after its creation (Python 3.10-3.13)."""
    existing = enum_cls.__members__.get(name)
    if existing is not None:
        if existing.value != value:
            raise AdapterError(
                f"{enum_cls.__name__}.{name} already exists with value {existing.value!r}: another package "
                "registered a PEFT method of that name, which steerpeft cannot replace."
            )
        return existing
    if value in enum_cls._value2member_map_:
        raise AdapterError(f"{enum_cls.__name__} already has a member with value {value!r}.")
    member = str.__new__(enum_cls, value)
    member._name_ = name
    member._value_ = value
    member.__objclass__ = enum_cls
    if hasattr(enum_cls, "_sort_order_") or any(hasattr(m, "_sort_order_") for m in enum_cls):
        member._sort_order_ = len(enum_cls._member_names_)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(name)
    type.__setattr__(enum_cls, name, member)  # EnumType.__setattr__ refuses new member names
    return member


def register() -> None:
    """Make STEER a PEFT method (idempotent); AdapterError on an unsupported PEFT version."""
    check_peft_version()
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )
    from peft.utils import PeftType

    members = [_add_enum_member(PeftType, "STEER", STEER_PEFT_TYPE)]
    # Adapters written before the rename carry the old value: it reads as the same method.
    members += [
        _add_enum_member(PeftType, f"STEER_LEGACY_{i}", value)
        for i, value in enumerate(LEGACY_STEER_PEFT_TYPES)
    ]
    for member in members:
        for table, value in (
            (PEFT_TYPE_TO_CONFIG_MAPPING, SteerConfig),
            (PEFT_TYPE_TO_TUNER_MAPPING, SteerModel),
            (PEFT_TYPE_TO_PREFIX_MAPPING, TUNER_PREFIX),
        ):
            current = table.get(member)
            if (
                current is not None and current is not value
                and getattr(current, "__qualname__", current) != getattr(value, "__qualname__", value)
            ):
                raise AdapterError(f"PEFT's {member.name} entry is already taken by {current!r}.")
            table[member] = value
        PEFT_TYPE_TO_MIXED_MODEL_MAPPING.pop(member, None)  # STEER does not mix inside PeftMixedModel


REGISTRATION_ERROR: AdapterError | None = None
"""Why STEER could not be registered on import (an untested PEFT version), else None."""

try:
    register()
except AdapterError as _exc:
    REGISTRATION_ERROR = _exc
    warnings.warn(f"steerpeft did not register its STEER PEFT method: {_exc}", RuntimeWarning, stacklevel=2)
