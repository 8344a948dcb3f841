"""Callbacks: progress, logging and anything else that watches the lifecycle."""

from steerpeft.callbacks.base import CALLBACKS, Callback, Runner, call_hook, stage
from steerpeft.callbacks.jsonl import JsonlLogger
from steerpeft.callbacks.progress import ProgressBar

__all__ = ["CALLBACKS", "Callback", "JsonlLogger", "ProgressBar", "Runner", "call_hook", "stage"]
