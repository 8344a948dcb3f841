"""Reaching modules by exact path through peft and torch.compile wrappers."""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

from steerpeft.errors import ArchitectureError


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip peft (``PeftModel``, ``LoraModel``) and ``torch.compile`` wrappers.

    Layouts are expressed relative to the transformers model so that they do not change when an
    adapter is attached; the wrapped and unwrapped models share their modules.
    """
    for _ in range(8):  # wrappers nest at most a few deep
        inner = _unwrap_once(model)
        if inner is model:
            return model
        model = inner
    return model


def _unwrap_once(model: nn.Module) -> nn.Module:
    if "peft" in sys.modules:  # a peft wrapper can only exist once peft is imported
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTuner

        if isinstance(model, PeftModel):
            return model.get_base_model()
        if isinstance(model, BaseTuner):
            return model.model
    orig = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
    if isinstance(orig, nn.Module):
        return orig
    return model


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at exact dotted ``path`` of the unwrapped model; ``""`` is the model itself."""
    root = unwrap_model(model)
    if path == "":
        return root
    module: nn.Module = root
    walked: list[str] = []
    for part in path.split("."):
        children = dict(module.named_children())
        if part not in children:
            where = ".".join(walked) or "the model"
            options = ", ".join(sorted(children)) or "none"
            raise ArchitectureError(
                f"module path {path!r} does not exist: {where} ({type(module).__name__}) has no child "
                f"{part!r} (children: {options})"
            )
        module = children[part]
        walked.append(part)
    return module


def text_config(model: nn.Module) -> Any:
    """The language backbone's config: ``config.text_config`` when present, else ``config``."""
    root = unwrap_model(model)
    config = getattr(root, "config", None)
    if config is None:
        raise ArchitectureError(
            f"{type(root).__name__} has no `config`; steerpeft expects a transformers model "
            "(PreTrainedModel) whose config names model_type, hidden_size and num_hidden_layers"
        )
    sub = getattr(config, "text_config", None)
    return sub if sub is not None else config
