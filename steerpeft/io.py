"""Atomic writes and safe reads of plan, adapter and report folders.

A folder is written under a temporary name beside its target and renamed into
place only when complete, so an interrupted save leaves the previous version
intact.  Reads use JSON and safetensors only: nothing loaded can run code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from steerpeft.errors import AdapterError, ConfigError
from steerpeft.formats import LEGACY_META_FILES, META_FILE


def _default_mode(path: Path, folder: bool) -> None:
    """Give a mkdtemp/mkstemp entry (private: 0700/0600) the mode a plain mkdir/open would, per the umask."""
    mask = os.umask(0o077)  # the umask can only be read by setting it; 077 errs on the private side meanwhile
    os.umask(mask)
    os.chmod(path, (0o777 if folder else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `target`, on any error it is deleted.

    The previous `target` is moved aside and restored if the final rename
    fails, so an exception at any point leaves the previous version in place
    and no temporary folder behind.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    backup = None
    try:
        _default_mode(staging, folder=True)
        yield staging
        if target.exists():
            backup = target.parent / f".{target.name}.old-{os.getpid()}"
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(target, backup)
        os.replace(staging, target)
    except BaseException:
        if backup is not None and backup.exists() and not target.exists():
            os.replace(backup, target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file through a temporary sibling and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        _default_mode(Path(temporary), folder=False)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path} is missing: the folder is not a complete steerpeft plan or adapter.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterError(
            f"{path} is not valid JSON ({exc}); the file is corrupt: save or download it again."
        ) from exc


def read_adapter_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """The provenance file beside an exported adapter (`steerpeft.json`, or the pre-rename
    `steerkit.json`), or {} when the folder has none (an adapter made by another tool)."""
    for name in (META_FILE, *LEGACY_META_FILES):
        path = Path(folder) / name
        if path.is_file():
            meta = read_json(path)
            if not isinstance(meta, dict):
                raise AdapterError(f"{path} is not a JSON object: the adapter is corrupt.")
            return meta
    return {}


def write_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    save_file(
        {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata
    )


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning truncation or corruption into a clear AdapterError."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path} is missing: the folder is not a complete steerpeft plan or adapter.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterError(
            f"{path} is not a readable safetensors file ({exc}). It is truncated or corrupt: save or "
            "download it again."
        ) from exc


def inside(root: str | os.PathLike, relative: str) -> Path:
    """`root / relative`, refusing paths that escape `root` (absolute, '..', links)."""
    root_path = Path(root).resolve()
    candidate = (root_path / relative).resolve()
    if candidate != root_path and root_path not in candidate.parents:
        raise ConfigError(
            f"Output path {relative!r} escapes the run folder {root_path}; use a path inside it."
        )
    return candidate
