"""Locate the language backbone of a model by exact module path (`known` table, `modules` access,
`layout` resolution).

Steering hooks the decoder layers of the *language* model. Vision-language models hold other
stacks of layers too (Qwen2.5-VL's vision blocks even have ``mlp.down_proj`` modules), so every
module is found by its exact dotted path from the top model, never by a name suffix.

Paths come from a table of known families (keyed by the top config's ``model_type``); other
models are probed at a short list of exact candidate paths. Either way a layer stack is only
accepted if it is an ``nn.ModuleList`` with ``num_hidden_layers`` entries that sits in the same
module as the token embedding (which rules out vision towers). Paths are relative to the
transformers model: a peft ``PeftModel`` is unwrapped first, so a LoRA-wrapped model gets the same
layout as the plain one.
"""

from steerpeft.architectures.known import KNOWN_ARCHITECTURES, KnownPaths
from steerpeft.architectures.layout import ModelLayout, decoder_layers, resolve_layout
from steerpeft.architectures.modules import get_module, text_config, unwrap_model
from steerpeft.errors import ArchitectureError

__all__ = [
    "KNOWN_ARCHITECTURES",
    "ArchitectureError",
    "KnownPaths",
    "ModelLayout",
    "decoder_layers",
    "get_module",
    "resolve_layout",
    "text_config",
    "unwrap_model",
]
