"""Shared pieces of the steerpeft benchmarks: models, prompts, plans, timing and results.

Every benchmark script imports this module (they run as `python benchmarks/<script>.py`, so
this folder is on `sys.path`).  Nothing here is part of the steerpeft package.

Models are either random-weight Llamas built from real configs (`1b`: Llama-3.2-1B-shaped,
`8b`: Llama-3-8B-shaped, `tiny`: a few-layer model for smoke runs) or the embedded
SmolLM2-135M-Instruct (`smollm2`, real weights via `steerpeft.models.load_model`).  Random
models get a synthetic word-level tokenizer (`w0 w1 ...`), built in code, so the libraries
that only accept strings (Steerer.fit, the peers) can be fed exactly the same token ids.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steerpeft.architectures import ModelLayout, decoder_layers, get_module, resolve_layout
from steerpeft.interventions import Ablate, AddDirection
from steerpeft.models.base import set_model_id
from steerpeft.plan import EMBEDDING, Plan, SteeringStep
from steerpeft.provenance import model_info
from steerpeft.scalers import ConstantScaler, TrustRegionScaler
from steerpeft.scalers.trust_region import LayerRegion

# Real model shapes (weights are random: throughput depends on shapes, not values).
LLAMA_3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
CONFIGS: dict[str, dict[str, Any]] = {
    # Llama-3.2-1B: 1.24 B parameters.
    "1b": {
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "intermediate_size": 8192,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_parameters": LLAMA_3_ROPE,
        "bos_token_id": 128000,
        "eos_token_id": 128009,
    },
    # Llama-3-8B (3.1 rope): 8.03 B parameters.
    "8b": {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_parameters": LLAMA_3_ROPE,
        "bos_token_id": 128000,
        "eos_token_id": 128009,
    },
    # Smoke runs: 4 layers, hidden 64, tied embeddings like the 1b.
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 128,
        "vocab_size": 512,
        "tie_word_embeddings": True,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "bos_token_id": 0,
        "eos_token_id": 1,
    },
}
MODEL_CHOICES = ("1b", "8b", "smollm2", "tiny")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SYNTHETIC_WORDS = 32000
"""Synthetic tokenizer size cap: ids 0..N-1 are words, then <pad> and <unk>."""


# ---------------------------------------------------------------------------------------------
# Command line


def common_parser(description: str) -> argparse.ArgumentParser:
    """Options every benchmark script shares (each adds its own)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", choices=MODEL_CHOICES, default="1b",
                        help="1b / 8b: random Llama-3 shapes; smollm2: the embedded real model; tiny: smoke")
    parser.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--prompt-len", type=int, default=128, help="prompt tokens (random models)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per row (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warmup rounds before the repeats")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="default bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--layer", type=int, default=None, help="steered / recorded layer (default: middle)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU runs)")
    parser.add_argument(
        "--smoke", action="store_true",
        help="tiny model on CPU, few tokens, 1 repeat: checks the script, times nothing useful",
    )
    parser.add_argument("--out", default=None, help="write the JSON results here")
    return parser


def finish_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                smoke: dict[str, Any]) -> argparse.Namespace:
    """Parse, apply the --smoke settings (to options left at their defaults) and fill device/dtype."""
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in {"model": "tiny", "device": "cpu", "repeats": 1, "warmup": 0, **smoke}.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.device = device
    if args.dtype is None:
        args.dtype = "float32" if device.type == "cpu" else "bfloat16"
    args.torch_dtype = DTYPES[args.dtype]
    args.batch_list = [int(b) for b in str(args.batch_sizes).split(",") if b.strip()]
    if args.smoke and not args.threads:
        args.threads = 1  # tiny ops: extra threads only add contention on a shared machine
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    return args


# ---------------------------------------------------------------------------------------------
# Models and tokenizers


@dataclass
class Loaded:
    model: nn.Module
    tokenizer: Any
    layout: ModelLayout
    name: str
    real_weights: bool

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def build_model(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Loaded:
    """The benchmark model: random weights built directly on `device`, or the embedded SmolLM2."""
    if name == "smollm2":
        from steerpeft.models import load_model

        model, tokenizer = load_model(dtype=dtype, device=device)
        model.eval()
        return Loaded(model, tokenizer, resolve_layout(model), name, True)
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**CONFIGS[name])
    torch.manual_seed(seed)
    # Built on the device directly (no CPU init, no host->device copy); HF's init draws
    # normal(0, 0.02) weights, small enough for a stable bf16 forward.
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    tokenizer = synthetic_tokenizer(config.vocab_size)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.do_sample = False
    return Loaded(model, tokenizer, resolve_layout(model), name, False)


def synthetic_tokenizer(vocab_size: int) -> Any:
    """A word-level fast tokenizer: "w17 w5" -> [17, 5]; left padding with <pad>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = min(SYNTHETIC_WORDS, vocab_size - 2)
    vocab = {f"w{i}": i for i in range(words)}
    vocab["<pad>"], vocab["<unk>"] = words, words + 1
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                        eos_token="<pad>", padding_side="left")
    tokenizer.synthetic_words = words
    return tokenizer


CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def chat_word_tokenizer(texts: Sequence[str]) -> Any:
    """A word-level tokenizer over the words of `texts`, with ChatML special tokens and chat template.

    Built in code (no file, no download), so a tiny random model can run a recipe on its real
    prompts: every word of `texts` (and of the refusal openings) has its own id; anything else is
    `<unk>`.  Left padding with `<pad>`; `<|im_end|>` ends a turn (the eos token).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from steerpeft.evaluation.first_token import DEFAULT_REFUSAL_OPENINGS

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [*texts, *DEFAULT_REFUSAL_OPENINGS, "system user assistant"]
    backend.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                        eos_token="<|im_end|>", padding_side="left")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_chat(device: torch.device, dtype: torch.dtype, texts: Sequence[str], seed: int = 0) -> Loaded:
    """The `tiny` Llama shape (random weights) with `chat_word_tokenizer(texts)`: a recipe's smoke model."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = chat_word_tokenizer(texts)
    settings = {**CONFIGS["tiny"], "vocab_size": len(tokenizer), "bos_token_id": None,
                "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**settings), dtype=dtype)
    model.eval()
    _greedy(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    set_model_id(model, tokenizer, "random-tiny-llama")
    return Loaded(model, tokenizer, resolve_layout(model), "tiny", False)


def _greedy(model: nn.Module, eos: Any, pad: int | None) -> None:
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.generation_config.do_sample = False


# ---------------------------------------------------------------------------------------------
# Qwen2.5 7B shapes with random weights and the real Qwen2.5 tokenizer (main job on the GPU)

QWEN_TOKENIZER_DIR = Path(__file__).resolve().parent / ".assets" / "qwen-tokenizer"
"""Default `--tokenizer` folder: the Qwen2.5 tokenizer files, copied by `copy_qwen_tokenizer.py`
(git-ignored)."""
QWEN_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

# Qwen2.5-7B-Instruct's language model (also Qwen2.5-VL-7B's): 7.6 B parameters.
QWEN25_7B_TEXT: dict[str, Any] = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "hidden_act": "silu",
}
# Qwen2.5-VL-7B's vision tower: 0.67 B parameters (window attention, full attention every 8th block).
QWEN25_VL_7B_VISION: dict[str, Any] = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "tokens_per_second": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "hidden_act": "silu",
}
# `--dry-run`: the same classes, tokenizer and processors at toy widths (a CPU check of the GPU modes).
DRY_RUN_TEXT = {
    "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
DRY_RUN_VISION = {
    "depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "fullatt_block_indexes": [1],
}


def qwen_text_settings(
    vocab_size: int, *, layers: int | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """Qwen2.5-7B's text config as a dict (toy widths with `dry_run`); vocab at least `vocab_size`."""
    settings = {**QWEN25_7B_TEXT, **(DRY_RUN_TEXT if dry_run else {})}
    settings["vocab_size"] = max(settings["vocab_size"], vocab_size)
    if layers is not None:
        settings["num_hidden_layers"] = layers
    return settings


def qwen_vision_settings(*, dry_run: bool = False) -> dict[str, Any]:
    """Qwen2.5-VL-7B's vision tower settings (toy widths with `dry_run`)."""
    return {**QWEN25_VL_7B_VISION, **(DRY_RUN_VISION if dry_run else {})}


def qwen_text_tokenizer(folder: str | Path) -> Any:
    """The Qwen2.5 tokenizer and chat template from `folder` (see `QWEN_TOKENIZER_FILES`), left padding."""
    from transformers import AutoTokenizer

    from steerpeft.models.base import prepare_tokenizer

    _check_tokenizer_folder(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    prepare_tokenizer(tokenizer)
    return tokenizer


def _check_tokenizer_folder(folder: str | Path) -> None:
    missing = [name for name in QWEN_TOKENIZER_FILES if not (Path(folder) / name).is_file()]
    if missing:
        raise SystemExit(f"--tokenizer {folder}: missing {', '.join(missing)}. Copy the Qwen2.5 tokenizer "
                         "first: python benchmarks/copy_qwen_tokenizer.py")


def _qwen_generation(model: nn.Module, tokenizer: Any) -> None:
    ends = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    _greedy(model, ends, tokenizer.pad_token_id)


def build_qwen_text(device: torch.device, dtype: torch.dtype, tokenizer_dir: str | Path, seed: int = 0, *,
                    layers: int | None = None, dry_run: bool = False) -> Loaded:
    """A Qwen2 model of Qwen2.5-7B-Instruct's shape, random weights built on `device`, the real tokenizer."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    tokenizer = qwen_text_tokenizer(tokenizer_dir)
    config = Qwen2Config(**qwen_text_settings(len(tokenizer), layers=layers, dry_run=dry_run))
    torch.manual_seed(seed)
    # Built on the device (no CPU copy of the weights); HF init draws normal(0, 0.02).
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    _qwen_generation(model, tokenizer)
    set_model_id(model, tokenizer, "random-qwen2.5-7b-shaped" + ("-dry-run" if dry_run else ""))
    return Loaded(model, tokenizer, resolve_layout(model), "7b-text", False)


def build_qwen_vl(device: torch.device, dtype: torch.dtype, tokenizer_dir: str | Path, seed: int = 0, *,
                  layers: int | None = None, dry_run: bool = False) -> Loaded:
    """A Qwen2.5-VL-7B-shaped model (random weights on `device`) with the real Qwen-VL processor classes.

    Tokenizer, chat template, config and processor come from `steerpeft.models.qwen_vl_shaped`; the
    processors keep their own pixel budgets (the released model's), so neutral images and video
    frames are 448 x 448 (`steerpeft.inputs.media.DYNAMIC_RESOLUTION_SIDE`): 256 tokens per image,
    256 per two frames.  `Loaded.tokenizer` is the processor.
    """
    import importlib.util

    from transformers import Qwen2_5_VLForConditionalGeneration

    if importlib.util.find_spec("torchvision") is None:
        raise SystemExit(
            "7b-vl needs torchvision: the Qwen-VL processor's video side imports it (pip install "
            "torchvision)."
        )
    from steerpeft.models.qwen_vl_parts import qwen_vl_config, qwen_vl_processor, qwen_vl_tokenizer

    _check_tokenizer_folder(tokenizer_dir)
    tokenizer = qwen_vl_tokenizer(tokenizer_dir)
    config = qwen_vl_config(qwen_text_settings(len(tokenizer), layers=layers, dry_run=dry_run),
                            qwen_vision_settings(dry_run=dry_run), tokenizer, tie_word_embeddings=False)
    processor = qwen_vl_processor(tokenizer, config.vision_config, image_pixels=None, video_pixels=None)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.eval()
    _qwen_generation(model, tokenizer)
    set_model_id(model, processor, "random-qwen2.5-vl-7b-shaped" + ("-dry-run" if dry_run else ""))
    return Loaded(model, processor, resolve_layout(model), "7b-vl", False)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def synthetic_prompts(count: int, min_len: int, max_len: int, words: int, *, low: int, high: int,
                      seed: int) -> list[str]:
    """`count` prompts of `min_len..max_len` words drawn from ids [low, high) of the synthetic vocabulary."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (count,), generator=generator).tolist()
    high = min(high, words)
    return [" ".join(f"w{i}" for i in torch.randint(low, high, (n,), generator=generator).tolist())
            for n in lengths]


def contrast_prompts(loaded: Loaded, count: int, prompt_len: int, seed: int) -> tuple[list[str], list[str]]:
    """Positive and negative prompt sets of `count` each (variable lengths, so batches are padded).

    SmolLM2: the built-in harmful / harmless sets, cycled.  Random models: synthetic words, the
    two sets drawn from different halves of the vocabulary (so their means differ).
    """
    if loaded.real_weights:
        from steerpeft.data import builtin_prompts

        harmful = list(builtin_prompts("harmful").prompts)
        harmless = list(builtin_prompts("harmless").prompts)
        return [harmful[i % len(harmful)] for i in range(count)], [
            harmless[i % len(harmless)] for i in range(count)
        ]
    words = loaded.tokenizer.synthetic_words
    low_len = max(2, prompt_len // 2)
    positive = synthetic_prompts(count, low_len, prompt_len, words, low=0, high=words // 2, seed=seed)
    negative = synthetic_prompts(count, low_len, prompt_len, words, low=words // 2, high=words, seed=seed + 1)
    return positive, negative


def rendered(loaded: Loaded, prompts: Sequence[str]) -> list[str]:
    """Prompts as the model sees them (chat template for SmolLM2, as steerpeft renders them)."""
    from steerpeft.inputs.text import render_chat

    return [render_chat(loaded.tokenizer, p) for p in prompts]


def encode(loaded: Loaded, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """One left-padded batch of already-rendered texts on the model's device."""
    tokenizer = loaded.tokenizer
    batch = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    return {k: v.to(loaded.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}


def generation_batch(loaded: Loaded, batch_size: int, prompt_len: int, seed: int) -> dict[str, torch.Tensor]:
    """Prompts for generation: `prompt_len` random ids per row (random models, no padding), or
    SmolLM2's built-in prompts through its chat template (left-padded)."""
    if loaded.real_weights:
        from steerpeft.data import builtin_prompts

        pool = list(builtin_prompts("harmless").prompts) + list(builtin_prompts("harmful").prompts)
        return encode(loaded, rendered(loaded, [pool[(seed + i) % len(pool)] for i in range(batch_size)]))
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, loaded.tokenizer.synthetic_words, (batch_size, prompt_len), generator=generator)
    return {"input_ids": ids.to(loaded.device), "attention_mask": torch.ones_like(ids).to(loaded.device)}


def middle_layer(loaded: Loaded, layer: int | None) -> int:
    return loaded.layout.num_layers // 2 if layer is None else layer


# ---------------------------------------------------------------------------------------------
# Directions and plans


def random_unit(hidden: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(hidden, generator=generator)
    return vector / vector.norm()


@torch.no_grad()
def layer_statistics(
    loaded: Loaded, batch: dict[str, torch.Tensor], layer: int, unit: torch.Tensor
) -> dict[str, float]:
    """Mean residual norm at `layer` over real tokens, and the mean / std of the projection on
    `unit` at each row's last token: sizes a direction and a trust region that really steer."""
    captured: dict[str, torch.Tensor] = {}
    module = decoder_layers(loaded.model, loaded.layout)[layer]

    def hook(mod: nn.Module, args: Any, output: Any) -> None:
        captured["h"] = (output[0] if isinstance(output, tuple) else output).float()

    handle = module.register_forward_hook(hook)
    try:
        loaded.model(**batch, use_cache=False)
    finally:
        handle.remove()
    hidden, mask = captured["h"], batch["attention_mask"].bool()
    norms = hidden.norm(dim=-1)[mask]
    last = hidden[:, -1, :] @ unit.to(hidden.device).float()  # left padding: the last column is real
    return {
        "mean_norm": float(norms.mean()),
        "projection_mean": float(last.mean()),
        "projection_std": float(last.std()) if last.numel() > 1 else float(last.abs().mean() + 1e-3),
    }


def actadd_plan(loaded: Loaded, layer: int, direction: torch.Tensor, alpha: float = 1.0) -> Plan:
    """ActAdd / CAA: h += alpha * direction at one layer, every token (prompt and generated)."""
    step = SteeringStep(
        {layer: direction.float().cpu()}, AddDirection(), ConstantScaler(alpha), "all", "actadd"
    )
    return Plan([step], model_info(loaded.model, loaded.layout))


def mars_plan(
    loaded: Loaded, layer: int, unit: torch.Tensor, stats: dict[str, float], tau: float = 0.0
) -> Plan:
    """MARS: a trust-region scaler built by hand, steering each row at its decision position.

    The region is centred on the measured projections (p- 4 std below the mean, p+ 4 std above),
    with tau 0, so every row's gate is open about half way: the plan really steers.
    """
    spread = max(stats["projection_std"], 1e-3)
    p_minus, p_plus = stats["projection_mean"] - 4 * spread, stats["projection_mean"] + 4 * spread
    hidden = loaded.layout.hidden_size
    scaler = TrustRegionScaler(tau=tau)
    scaler.regions[layer] = LayerRegion(
        unit.float().cpu(), p_plus, p_minus, stats["mean_norm"], torch.zeros(3, hidden)
    )
    direction = unit.float().cpu() * stats["mean_norm"]
    step = SteeringStep({layer: direction}, AddDirection(normalize=True), scaler, "decision", "mars")
    return Plan([step], model_info(loaded.model, loaded.layout))


def supports_writer_site() -> bool:
    """True when this steerpeft's SteeringStep can act at the residual writers (`site="writers"`)."""
    return "site" in {f.name for f in dataclasses.fields(SteeringStep)}


def ablation_plan(loaded: Loaded, unit: torch.Tensor, site: str = "output") -> Plan:
    """Directional ablation (Arditi et al.) at every decoder layer and the embedding, every token.

    `site="output"` hooks each layer's output; `site="writers"` (when steerpeft has it) hooks the
    attention and MLP output projections, which is exactly the merged-weights edit.
    """
    directions = {layer: unit.float().cpu() for layer in range(loaded.layout.num_layers)}
    directions[EMBEDDING] = unit.float().cpu()
    extra = {"site": site} if site != "output" else {}
    step = SteeringStep(directions, Ablate(), ConstantScaler(1.0), "all", "ablate", **extra)
    return Plan([step], model_info(loaded.model, loaded.layout))


# ---------------------------------------------------------------------------------------------
# Ablation merged into the weights


def untie_output_embedding(model: nn.Module, layout: ModelLayout) -> None:
    """Give a tied lm_head its own copy of the embedding, so editing the embedding leaves it alone."""
    embedding = get_module(model, layout.embedding_path)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and head.weight is embedding.weight:
        head.weight = nn.Parameter(embedding.weight.detach().clone(), requires_grad=False)
        for config in (model.config, getattr(model.config, "text_config", None)):
            if config is not None:
                config.tie_word_embeddings = False


@torch.no_grad()
def orthogonalize_in_place(model: nn.Module, layout: ModelLayout, unit: torch.Tensor) -> None:
    """W' = (I - u u^T) W for every residual writer (o_proj, down_proj) and E' = E (I - u u^T)
    for the token embedding, computed in float32.  A tied lm_head keeps the original embedding."""
    device = next(model.parameters()).device
    u = unit.to(device, torch.float32)
    u = u / u.norm()
    untie_output_embedding(model, layout)
    embedding = get_module(model, layout.embedding_path)
    for index in range(layout.num_layers):
        for path in layout.residual_writer_paths(index):
            linear = get_module(model, path)
            weight = linear.weight.float()  # [hidden, in]: output = W x
            weight -= torch.outer(u, u @ weight)
            linear.weight.copy_(weight)
            if getattr(linear, "bias", None) is not None:
                bias = linear.bias.float()
                linear.bias.copy_(bias - (bias @ u) * u)
    table = embedding.weight.float()  # [vocab, hidden]: each row is one token's state
    table -= torch.outer(table @ u, u)
    embedding.weight.copy_(table)


def merged_ablation_model(loaded: Loaded, plan: Plan, unit: torch.Tensor) -> tuple[nn.Module, str]:
    """A copy of the model with the ablation merged into its weights, and how it was made.

    Uses `steerpeft.adapters.export_adapter(kind="lora")` + PEFT `merge_and_unload` when steerpeft
    has it: exported from the writer-site plan where steerpeft has that site (an exact LoRA), else
    from `plan` (weight orthogonalization).  Otherwise, or if that fails, the in-place weight
    edit above on a deep copy.
    """
    reason = "steerpeft.adapters.export_adapter is not available"
    try:
        from steerpeft.adapters import export_adapter
    except ImportError:
        export_adapter = None
    if export_adapter is not None:
        import tempfile
        import warnings

        from peft import PeftModel

        source = ablation_plan(loaded, unit, site="writers") if supports_writer_site() else plan
        try:
            with tempfile.TemporaryDirectory() as folder:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # "layer ablation as LoRA is not exact"
                    export_adapter(source, loaded.model, folder, kind="lora")
                base = copy.deepcopy(loaded.model)
                # merging the embedding LoRA must leave lm_head alone
                untie_output_embedding(base, loaded.layout)
                merged = PeftModel.from_pretrained(base, folder).merge_and_unload()
            site = "writer-site plan" if source is not plan else "layer-output plan"
            return merged.eval(), f"export_adapter(kind='lora') of the {site} + PeftModel.merge_and_unload"
        except Exception as exc:  # noqa: BLE001 - recorded in the results
            reason = f"export_adapter path failed: {type(exc).__name__}: {exc}"[:300]
    merged = copy.deepcopy(loaded.model)
    orthogonalize_in_place(merged, loaded.layout, unit)
    return merged.eval(), f"in-place weight edit in the benchmark ({reason})"


# ---------------------------------------------------------------------------------------------
# Timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(seconds, result) of `fn()`, with the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def rotated(items: Sequence[Any], shift: int) -> list[Any]:
    """`items` rotated by `shift`: each repeat visits the rows in a different order (no position bias)."""
    shift %= max(1, len(items))
    return list(items[shift:]) + list(items[:shift])


def ratio(value: float, reference: float) -> float:
    return float(value / reference) if reference and not math.isnan(reference) else float("nan")


@contextmanager
def maybe(context: Any) -> Iterator[None]:
    with context if context is not None else nullcontext():
        yield


# ---------------------------------------------------------------------------------------------
# Results


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, device and the exact command: printed at the top of RESULTS.md."""
    import peft
    import transformers

    info: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import steerpeft

        info["steerpeft"] = getattr(steerpeft, "__version__", "?")
    except ImportError:
        pass
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["device_name"] = info["cpu"]
        try:
            info["load_average"] = list(os.getloadavg())
        except OSError:
            pass
    return info


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_results(results: dict[str, Any], out: str | None) -> None:
    text = json.dumps(results, indent=2, default=_jsonable)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        print(f"wrote {path}", file=sys.stderr)
    else:
        print(text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (torch.device, torch.dtype)):
        return str(value)
    return repr(value)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_timed(main: Any) -> None:
    """A script's `__main__`: run `main()` and log its wall time."""
    start = time.perf_counter()
    main()
    log(f"done in {time.perf_counter() - start:.1f} s")


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())
