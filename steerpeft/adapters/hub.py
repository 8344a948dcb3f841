"""Share an exported adapter folder on the Hugging Face Hub.

`push_to_hub` checks the folder is a complete adapter, lists exactly the files it will send, and
hands an `UploadRequest` to an uploader: by default huggingface_hub (`HfApi.create_repo` then
`upload_folder` restricted to those files); tests inject their own callable and inspect the
request.  PEFT's own `push_to_hub` is not used: it would re-serialise a live model, while the
exported folder (card and provenance included) is what should be shared.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerpeft.errors import AdapterError, ConfigError
from steerpeft.io import read_adapter_meta

__all__ = ["UploadRequest", "push_to_hub"]

_REQUIRED = ("adapter_config.json", "adapter_model.safetensors", "README.md")


@dataclass(frozen=True)
class UploadRequest:
    """Everything one upload sends: the folder, the repo, the exact file list and the commit message."""

    folder: Path
    repo_id: str
    files: tuple[str, ...]
    commit_message: str
    private: bool
    token: str | None


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool = False,
                upload: Callable[[UploadRequest], Any] | None = None) -> Any:
    """Upload the adapter `folder` to the model repo `repo_id` (created if missing); return the upload's
    result."""
    root = Path(folder)
    if not root.is_dir():
        raise AdapterError(f"{root} is not a folder: export the adapter first (export_adapter).")
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"repo_id must look like 'user-or-org/name', got {repo_id!r}.")
    missing = [name for name in _REQUIRED if not (root / name).is_file()]
    if missing:
        raise AdapterError(f"{root} is not a complete adapter folder: missing {', '.join(missing)}.")
    files = tuple(sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ))
    meta = read_adapter_meta(root)
    kind = meta.get("kind", "PEFT")
    model_id = (meta.get("model") or {}).get("model_id") or ""
    message = f"Upload steerpeft {kind} adapter" + (f" for {model_id}" if model_id else "")
    request = UploadRequest(root, repo_id, files, message, private, token)
    return (upload or _hub_upload)(request)


def _hub_upload(request: UploadRequest) -> Any:
    from huggingface_hub import HfApi

    api = HfApi(token=request.token)
    api.create_repo(repo_id=request.repo_id, private=request.private, repo_type="model", exist_ok=True)
    return api.upload_folder(
        repo_id=request.repo_id,
        folder_path=str(request.folder),
        repo_type="model",
        commit_message=request.commit_message,
        allow_patterns=list(request.files),
    )
