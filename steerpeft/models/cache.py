"""Atomic cache folders for converted and built models.

A folder is built in a temporary sibling, finished with a marker file, then renamed into
place.  A folder without its marker (a crash mid-write, a manual copy) is never used: it is
rebuilt.  A file lock makes parallel processes build it once.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

CACHE_MARKER = "steerpeft-cache.json"
"""Written last into a cache folder: a folder without it is incomplete and is rebuilt."""


def cache_dir() -> pathlib.Path:
    """Where steerpeft caches converted models: `$STEERPEFT_CACHE`, else `~/.cache/steerpeft`."""
    configured = os.environ.get("STEERPEFT_CACHE")
    return (
        pathlib.Path(configured).expanduser() if configured else pathlib.Path.home() / ".cache" / "steerpeft"
    )



@contextlib.contextmanager
def _file_lock(path: pathlib.Path) -> Iterator[None]:
    """An exclusive advisory lock, so parallel processes build a cache folder once (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # Windows: atomic renames still keep the cache consistent
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_marker(folder: pathlib.Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / CACHE_MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_complete(folder: pathlib.Path, expected: dict[str, Any]) -> bool:
    """True when `folder` has its marker and the marker matches every item of `expected`."""
    marker = read_marker(folder)
    return marker is not None and all(marker.get(key) == value for key, value in expected.items())


def _fsync_tree(folder: pathlib.Path) -> None:
    """Flush every file (and the folder) to disk, so a power cut cannot leave a marked but empty file."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    with contextlib.suppress(OSError):  # directories cannot be opened on some platforms
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def build_cached_folder(
    name: str, marker: dict[str, Any], build: Callable[[pathlib.Path], None], *, force: bool = False
) -> pathlib.Path:
    """`cache_dir()/name`, built by `build(tmp_folder)` unless a complete one with `marker` exists.

    The folder is built in a temporary sibling, `marker` is written last, and the folder is
    renamed into place; an incomplete or outdated folder at the target is moved away first.
    """
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    if not force and is_complete(target, marker):
        return target
    with _file_lock(root / f".{name}.lock"):
        if not force and is_complete(target, marker):  # another process built it meanwhile
            return target
        # Under the lock no other builder is running: leftovers are from crashed builds.
        for stale in root.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            build(tmp)
            (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
            _fsync_tree(tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private; a cache folder is an ordinary folder
            old = None
            if target.exists() or target.is_symlink():
                old = root / f".{name}.tmp-old-{os.getpid()}"
                os.replace(target, old)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    return target

