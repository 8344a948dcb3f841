"""The table of known families: exact module paths of decoder layers, embedding and residual writers.

Paths are relative to the base model (``model.base_model``).  Families outside the table are probed
at the exact candidate paths listed here, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

# Residual-stream writers inside one decoder layer: attention output and MLP output projections.
ATTN_OUT = "self_attn.o_proj"
MLP_OUT = "mlp.down_proj"


@dataclass(frozen=True)
class KnownPaths:
    """Paths relative to the base model (``model.base_model``), so they hold for both the
    ``*ForCausalLM`` / ``*ForConditionalGeneration`` head classes and the bare ``*Model``."""

    layers: str
    embedding: str
    writers: tuple[str, ...] = (ATTN_OUT, MLP_OUT)


TEXT = KnownPaths("layers", "embed_tokens")
LANGUAGE_MODEL = KnownPaths("language_model.layers", "language_model.embed_tokens")
TEXT_MODEL = KnownPaths("text_model.layers", "text_model.embed_tokens")

# Verified with transformers 5.23 on tiny models (tests/test_architectures.py checks each one).
KNOWN_ARCHITECTURES: dict[str, KnownPaths] = {
    "llama": TEXT,
    "mistral": TEXT,
    "qwen2": TEXT,
    "qwen3": TEXT,
    "gemma2": TEXT,
    "gemma3_text": TEXT,  # Gemma3ForCausalLM
    "phi3": TEXT,  # fused qkv_proj / gate_up_proj, but o_proj and down_proj like Llama
    "llava": LANGUAGE_MODEL,
    "llava_onevision": LANGUAGE_MODEL,
    "qwen2_vl": LANGUAGE_MODEL,
    "qwen2_5_vl": LANGUAGE_MODEL,
    "gemma3": LANGUAGE_MODEL,  # Gemma3ForConditionalGeneration
    "idefics3": TEXT_MODEL,  # also SmolVLM-256M/500M
    "smolvlm": TEXT_MODEL,  # SmolVLM2
}

# Exact full paths tried, in order, for models outside the table.
LAYER_CANDIDATES: tuple[str, ...] = (
    "model.layers",
    "model.language_model.layers",
    "model.text_model.layers",
    "model.language_model.model.layers",  # transformers 4 style composite models
    "language_model.model.layers",
    "layers",
    "language_model.layers",
    "text_model.layers",
    "model.decoder.layers",
    "transformer.h",
    "transformer.layers",
    "gpt_neox.layers",
)
ATTN_OUT_CANDIDATES = (
    ATTN_OUT,
    "self_attn.out_proj",
    "attn.o_proj",
    "attention.o_proj",
    "self_attention.dense",
)
MLP_OUT_CANDIDATES = (MLP_OUT, "mlp.fc2", "feed_forward.w2", "mlp.dense_4h_to_h")

FIX_HINT = (
    "Pass the exact dotted paths by hand: resolve_layout(model, layers_path='model.layers', "
    "embedding_path='model.embed_tokens') in Python, or the recipe keys `model.layers_path` / "
    "`model.embedding_path`."
)
