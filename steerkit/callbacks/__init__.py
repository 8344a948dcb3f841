"""Callbacks: progress, logging and anything else that watches the lifecycle."""

from steerkit.callbacks.base import CALLBACKS, Callback
from steerkit.callbacks.jsonl import JsonlLogger
from steerkit.callbacks.progress import ProgressBar

__all__ = ["CALLBACKS", "Callback", "JsonlLogger", "ProgressBar"]
