"""Steering as PEFT adapters: export, load, share.

- `export_adapter(plan, model, path, kind="auto"|"lora"|"steer", card=None)` writes a plan as a
  plain LoRA (stock PEFT and transformers load it), a STEER adapter (a native PEFT method that
  steerpeft registers), or both;
- `load_adapter(model, path)` loads any of them, also on top of a user's own LoRA;
- `push_to_hub(folder, repo_id)` uploads an exported folder.

Importing this package (`import steerpeft` does) registers STEER with PEFT: at once when PEFT is
already imported, otherwise the moment it is (a one-shot import hook), so `import steerpeft`
does not pay PEFT's import time and every later PEFT or transformers call sees STEER.  On an
untested PEFT version the registration is skipped with a warning, plain LoRA keeps working, and
STEER calls raise the version error (`require_steer`).
"""

from __future__ import annotations

from steerpeft.adapters.card import render_card
from steerpeft.adapters.exporting import export_adapter
from steerpeft.adapters.hub import UploadRequest, push_to_hub
from steerpeft.adapters.loading import load_adapter
from steerpeft.adapters.peft_hook import install, require_steer

__all__ = ["UploadRequest", "export_adapter", "load_adapter", "push_to_hub", "render_card", "require_steer"]

install()
