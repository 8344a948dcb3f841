"""Inputs: prompts through the chat template, neutral media, and multimodal batches.

- `text`: chat-formatted, padded text batches (`encode_prompts`) and prompt-list checks;
- `media`: neutral images and videos at each processor's native size;
- `batches`: one batch path for text, image and video prompts (`modality_batches`);
- `modality`: the `Modality` of a row (text, image, video).
"""

from steerpeft.inputs.batches import available_modalities, build_batch, modality_batches
from steerpeft.inputs.modality import MODALITIES, Modality
from steerpeft.inputs.text import as_prompt_list, encode_prompts, model_device, render_chat

__all__ = [
    "MODALITIES",
    "Modality",
    "as_prompt_list",
    "available_modalities",
    "build_batch",
    "encode_prompts",
    "modality_batches",
    "model_device",
    "render_chat",
]
