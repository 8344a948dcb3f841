"""Prompt data: the built-in harmful/harmless sets and loaders for user files."""

from steerpeft.data.prompts import (
    BUILTIN_KINDS,
    SUPPORTED_EXTENSIONS,
    PromptSet,
    builtin_pairs,
    builtin_prompts,
    load_prompts,
)

__all__ = [
    "BUILTIN_KINDS",
    "SUPPORTED_EXTENSIONS",
    "PromptSet",
    "builtin_pairs",
    "builtin_prompts",
    "load_prompts",
]
