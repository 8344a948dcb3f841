"""Turning prompt strings into padded model inputs through the chat template."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from steerpeft.errors import DataError


def text_tokenizer(tokenizer_or_processor: Any) -> Any:
    """The text tokenizer of a tokenizer or a multimodal processor."""
    return getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)


def render_chat(tokenizer: Any, prompt: str, system: str | None = None) -> str:
    """The prompt as the model sees it: chat template with the generation prompt, if it has one."""
    tokenizer = text_tokenizer(tokenizer)
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt


def encode_prompts(
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    padding_side: str = "left",
    system: str | None = None,
    max_length: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """One padded batch of chat-formatted prompts (left padding by default, as for generation)."""
    if len(prompts) == 0:
        raise DataError("The prompt list is empty: give at least one prompt.")
    tokenizer = text_tokenizer(tokenizer)
    texts = [render_chat(tokenizer, p, system) for p in prompts]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = previous_side
    if max_length is not None:
        lengths = batch["attention_mask"].sum(1)
        too_long = [i for i, n in enumerate(lengths.tolist()) if n > max_length]
        if too_long:
            i = too_long[0]
            raise DataError(
                f"Prompt {i} ({prompts[i][:60]!r}...) is {int(lengths[i])} tokens, longer than the model's "
                f"context of {max_length}. Shorten or drop it."
            )
    if device is not None:
        batch = {k: v.to(device) for k, v in batch.items()}
    return dict(batch)


def check_prompt_lengths(tokenizer: Any, prompts: Sequence[str], max_length: int | None, what: str,
                         system: str | None = None) -> None:
    """Refuse a prompt longer than the context before any batch runs, naming it by its index in the set."""
    if max_length is None:
        return
    tokenizer = text_tokenizer(tokenizer)
    for index, prompt in enumerate(prompts):
        length = len(tokenizer(render_chat(tokenizer, prompt, system), add_special_tokens=False)["input_ids"])
        if length > max_length:
            raise DataError(
                f"{what.capitalize()} prompt {index} ({prompt[:60]!r}...) is {length} tokens with the chat "
                f"template, longer than the model's context of {max_length}. Shorten or drop it."
            )


def batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    if size < 1:
        raise DataError(f"batch size must be >= 1, got {size}.")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def context_length(model: Any) -> int | None:
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    return getattr(config, "max_position_embeddings", None)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where inputs go: the device of the first parameter (the embedding, under device_map)."""
    return next(model.parameters()).device


def as_prompt_list(prompts: Sequence[str] | Any, what: str) -> list[str]:
    items = list(getattr(prompts, "prompts", prompts))
    if not items:
        raise DataError(f"The {what} prompt set is empty: give at least one prompt.")
    if not all(isinstance(p, str) and p.strip() for p in items):
        raise DataError(
            f"The {what} prompt set holds empty or non-text entries; every prompt must be a non-empty string."
        )
    return items
