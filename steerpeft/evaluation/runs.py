"""Running the model for evaluation: decision-position logits and greedy answers.

Batches are dicts of tensors as a tokenizer or processor returns them
(`input_ids`, `attention_mask`, and for multimodal rows `pixel_values` etc.,
passed to the model untouched apart from moving them to its device).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from steerpeft.errors import ConfigError, DataError
from steerpeft.inputs.text import text_tokenizer


def _on_model_device(model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    device = getattr(model, "device", None)
    if not isinstance(device, torch.device):
        return dict(batch)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _attention_mask(batch: dict[str, Any]) -> torch.Tensor:
    mask = batch.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise DataError(
            "The batch needs a 2-D `attention_mask` tensor [batch, seq] to find each row's last real token; "
            "build it with steerpeft.inputs.text.encode_prompts or a tokenizer called with padding=True."
        )
    return mask


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Column of each row's last real token [B]: right for left and right padding alike."""
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = torch.where(attention_mask.bool(), columns, -1).amax(dim=1)
    if bool((last < 0).any()):
        row = int((last < 0).nonzero()[0])
        raise DataError(f"Row {row} of the batch has no real token (its attention_mask is all zeros).")
    return last


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def decision_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Float32 next-token logits [B, V] at each row's last real token (the decision position).

    One forward pass without KV cache.  With left padding (every row ends in the
    last column) only that column's logits are computed when the model supports
    `logits_to_keep`; otherwise the full [B, T, V] logits are gathered per row.
    """
    mask = _attention_mask(batch)
    last = last_token_index(mask)
    kwargs: dict[str, Any] = {"use_cache": False}
    width = mask.shape[1]
    only_last_column = bool((last == width - 1).all()) and _accepts(model, "logits_to_keep")
    if only_last_column:
        kwargs["logits_to_keep"] = 1
    logits = model(**_on_model_device(model, batch), **kwargs).logits
    if only_last_column:
        return logits[:, -1].float()
    if logits.shape[1] != width:
        raise DataError(
            f"The model returned logits for {logits.shape[1]} positions but the attention_mask has {width} "
            "columns; decision_logits needs one logit row per input position."
        )
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, last.to(logits.device)].float()


@torch.no_grad()
def generate_texts(
    model: nn.Module, tokenizer_or_processor: Any, batch: dict[str, torch.Tensor], max_new_tokens: int = 32
) -> list[str]:
    """Greedy answers to a left-padded batch: only the new text, special tokens dropped.

    Right padding is refused: generation would continue after the pad tokens.
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    mask = _attention_mask(batch)
    if not bool((last_token_index(mask) == mask.shape[1] - 1).all()):
        raise DataError(
            "generate_texts needs left-padded batches (every row ending in the last column); "
            "encode the prompts with padding_side='left'."
        )
    tokenizer = text_tokenizer(tokenizer_or_processor)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    output = model.generate(
        **_on_model_device(model, batch),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad_token_id,
    )
    sequences = output.sequences if hasattr(output, "sequences") else output
    new_tokens = sequences[:, mask.shape[1] :].cpu()
    decoder = tokenizer if hasattr(tokenizer, "batch_decode") else tokenizer_or_processor
    return list(decoder.batch_decode(new_tokens, skip_special_tokens=True))
