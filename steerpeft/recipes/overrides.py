"""`key.path=value` overrides, as the CLI takes them, applied to a recipe's config."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from steerpeft.errors import ConfigError


def apply_override(config: DictConfig, item: str) -> None:
    """Set one `key.path=value` override in place, with a clear error for impossible paths."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"Override {item!r} must look like key.path=value (e.g. model.dtype=bfloat16).")
    try:
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"]  # type: ignore[index]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"Override {item!r}: cannot parse the value {raw!r} ({exc}).") from exc
    parts = key.replace("[", ".").replace("]", "").split(".")
    if any(not part for part in parts):
        raise ConfigError(f"Override {item!r}: {key!r} is not a valid key path (empty part).")
    node: Any = config
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"Override {item!r}: {'.'.join(parts[:depth]) or 'the recipe'} is a list "
                                  f"of {len(node)} item(s); address one by index 0..{len(node) - 1}, e.g. "
                                  f"{'.'.join(parts[:depth])}.0.{'.'.join(parts[depth + 1:])}=...")
            node = node[int(part)]
        elif isinstance(node, DictConfig):
            if part not in node or node[part] is None:
                break  # a new subtree: validate() judges the keys
            node = node[part]
        else:
            raise ConfigError(f"Override {item!r}: {'.'.join(parts[:depth])} is the value {node!r}, not a "
                              f"mapping, so it has no key {part!r} ({where}).")
    if isinstance(node, ListConfig):
        last = parts[-1]
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(
                f"Override {item!r}: index {last!r} is out of range for a list of {len(node)} item(s)."
            )
    elif not isinstance(node, (DictConfig, ListConfig)):
        raise ConfigError(f"Override {item!r}: {'.'.join(parts[:-1])} is the value {node!r}, not a mapping.")
    # Mappings merge into mappings (siblings kept); anything else replaces what was there, so a list
    # may take the place of a `{start, stop}` mapping (`steps.0.selector.candidates=[14]`).
    current = OmegaConf.select(config, ".".join(parts), default=None)
    merge = isinstance(value, dict) and isinstance(current, DictConfig)
    try:
        OmegaConf.update(config, ".".join(parts), value, merge=merge)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"Bad override {item!r}: {exc}") from exc
