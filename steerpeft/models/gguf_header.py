"""Reading one key of a GGUF file's header in milliseconds, without parsing the file.

`gguf.GGUFReader` parses every tensor record and the whole vocabulary (seconds on a 0.5B model);
checking which architecture a file holds, before converting it, needs only the first keys.
"""

from __future__ import annotations

import pathlib
import struct
from typing import Any

# GGUF value types (GGUF spec): fixed sizes in bytes; 8 is a string, 9 an array.
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_architecture(path: pathlib.Path, max_keys: int = 256) -> str | None:
    """`general.architecture` of a GGUF file, read from the first keys of its header (milliseconds).

    The full `gguf.GGUFReader` parses every tensor record and the whole vocabulary (seconds); the
    architecture is among the first metadata keys.  None when the file is not a (little-endian)
    GGUF file or the key is not found.
    """
    def read(handle: Any, fmt: str) -> Any:
        data = handle.read(struct.calcsize(fmt))
        if len(data) != struct.calcsize(fmt):
            raise ValueError("truncated GGUF header")
        return struct.unpack(fmt, data)[0]

    def read_string(handle: Any) -> bytes:
        length = read(handle, "<Q")
        if length > 1 << 20:
            raise ValueError("implausible GGUF string length")
        return handle.read(length)

    def skip(handle: Any, value_type: int) -> None:
        if value_type == _GGUF_STRING:
            read_string(handle)
        elif value_type == _GGUF_ARRAY:
            item_type, count = read(handle, "<I"), read(handle, "<Q")
            if item_type in _GGUF_SIZES:
                handle.seek(_GGUF_SIZES[item_type] * count, 1)
            else:
                for _ in range(count):
                    skip(handle, item_type)
        elif value_type in _GGUF_SIZES:
            handle.seek(_GGUF_SIZES[value_type], 1)
        else:
            raise ValueError(f"unknown GGUF value type {value_type}")

    try:
        with open(path, "rb") as handle:
            if handle.read(4) != b"GGUF" or read(handle, "<I") not in (2, 3):
                return None
            read(handle, "<Q")  # tensor count
            for _ in range(min(read(handle, "<Q"), max_keys)):
                key, value_type = read_string(handle), read(handle, "<I")
                if key == b"general.architecture" and value_type == _GGUF_STRING:
                    return read_string(handle).decode("utf-8", errors="replace")
                skip(handle, value_type)
    except (OSError, ValueError, struct.error):
        return None
    return None
