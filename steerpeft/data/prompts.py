"""Prompt sets: the built-in harmful/harmless pairs and loaders for user files.

A direction such as the refusal direction is fitted from two `PromptSet`s
(for example harmful vs harmless instructions).  `builtin_prompts` gives the
embedded default sets, written for steerpeft and matched pair by pair in topic
and grammatical form, so that a difference of means learns the contrast that
matters rather than "question vs command" or "chemistry vs cooking".

`load_prompts` reads a user's own prompts.  Supported sources:

* ``builtin:harmful`` / ``builtin:harmless``: the embedded sets.
* ``.txt``: one prompt per line; blank lines and lines starting with ``#``
  are skipped.
* ``.csv`` / ``.tsv``: a header row, then one prompt per row.  ``column``
  names the prompt column; it may be left out only when there is one column.
* ``.json``: one of
    - a list of strings;
    - a list of objects, with ``column`` naming the field (optional when every
      object has exactly one key);
    - an object holding a list of strings under ``column``, or, when
      ``column`` is not given, under ``"prompts"`` or ``"instructions"``.
* ``.jsonl``: one JSON value per non-blank line, either all strings or all
  objects (``column`` as for a JSON list of objects).
* ``hf:org/name``: a Hugging Face dataset, read with the optional
  ``datasets`` package; ``split`` picks the split and ``column`` the field.

Every entry is stripped of surrounding whitespace; order and duplicates are
kept.  Parsing uses only `json` and `csv`: no code in a data file is run.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from steerpeft.errors import ConfigError, DataError
from steerpeft.registry import suggest

BUILTIN_KINDS: tuple[str, ...] = ("harmful", "harmless")
SUPPORTED_EXTENSIONS: tuple[str, ...] = (".txt", ".csv", ".tsv", ".json", ".jsonl")
JSON_LIST_KEYS: tuple[str, ...] = ("prompts", "instructions")

_BUILTIN_FILE = "builtin_prompts.json"


@dataclass(frozen=True)
class PromptSet:
    """A named list of prompt strings, checked non-empty at construction.

    `prompts` may be given as any sequence of strings; it is stored as a tuple
    so the set is hashable and cannot change under a running extraction.
    """

    name: str
    prompts: tuple[str, ...]

    def __post_init__(self) -> None:
        prompts = tuple(self.prompts)
        object.__setattr__(self, "prompts", prompts)
        if not prompts:
            raise DataError(f"Prompt set {self.name!r} is empty: give at least one prompt.")
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise DataError(
                    f"Prompt set {self.name!r}: entry {index} is a {type(prompt).__name__}, not a string."
                )
            if not prompt.strip():
                raise DataError(f"Prompt set {self.name!r}: entry {index} is an empty string.")

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[str]:
        return iter(self.prompts)

    def __getitem__(self, index: int) -> str:
        return self.prompts[index]

    def split(self, validation_fraction: float = 0.25, seed: int = 0) -> tuple[PromptSet, PromptSet]:
        """Split into (train, validation) by a seeded shuffle of which prompts go where.

        The same seed always gives the same split.  Each part keeps the original
        order of its prompts.  The validation part holds
        ``round(len(self) * validation_fraction)`` prompts; both parts must be
        non-empty, so a set of one prompt cannot be split.
        """
        if not 0.0 < validation_fraction < 1.0:
            raise ConfigError(
                f"validation_fraction must lie strictly between 0 and 1, got {validation_fraction!r}."
            )
        n_validation = round(len(self) * validation_fraction)
        if n_validation < 1 or n_validation >= len(self):
            raise DataError(
                f"Cannot split prompt set {self.name!r} ({len(self)} prompts) with validation_fraction="
                f"{validation_fraction}: one part would be empty. Add prompts or change the fraction."
            )
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        validation_indices = set(order[:n_validation])
        train = [p for i, p in enumerate(self.prompts) if i not in validation_indices]
        validation = [p for i, p in enumerate(self.prompts) if i in validation_indices]
        return (
            PromptSet(f"{self.name}[train]", tuple(train)),
            PromptSet(f"{self.name}[validation]", tuple(validation)),
        )

    def take(self, n: int) -> PromptSet:
        """The first `n` prompts; asking for more than the set holds is an error, not a silent cap."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"take(n) needs a positive integer, got {n!r}.")
        if n > len(self):
            raise DataError(f"Prompt set {self.name!r} holds {len(self)} prompts; cannot take {n}.")
        return PromptSet(self.name, self.prompts[:n])


# ---------------------------------------------------------------------------
# Built-in sets


@functools.lru_cache(maxsize=1)
def _builtin_document() -> tuple[tuple[str, str, str], ...]:
    """The (topic, harmful, harmless) pairs from the packaged JSON, checked once."""
    text = resources.files("steerpeft.data").joinpath(_BUILTIN_FILE).read_text(encoding="utf-8")
    document = json.loads(text)
    pairs = document.get("pairs") if isinstance(document, dict) else None
    if not isinstance(pairs, list) or not pairs:
        raise DataError(f"The packaged {_BUILTIN_FILE} has no 'pairs' list: the installation is broken.")
    result = []
    for index, pair in enumerate(pairs):
        fields = [
            pair.get(key) if isinstance(pair, dict) else None for key in ("topic", "harmful", "harmless")
        ]
        if not all(isinstance(field, str) and field.strip() for field in fields):
            raise DataError(f"The packaged {_BUILTIN_FILE} has a malformed pair at index {index}.")
        result.append(tuple(field.strip() for field in fields))
    return tuple(result)  # type: ignore[return-value]


def builtin_pairs() -> list[tuple[str, str, str]]:
    """The built-in prompts as (topic, harmful, harmless) twins, in file order."""
    return list(_builtin_document())


def builtin_prompts(kind: str) -> PromptSet:
    """The built-in harmful or harmless instructions, named ``builtin:<kind>``."""
    if kind not in BUILTIN_KINDS:
        raise ConfigError(
            f"Unknown built-in prompt set {kind!r}.{suggest(kind, list(BUILTIN_KINDS))} "
            f"Known: {', '.join(BUILTIN_KINDS)}."
        )
    column = 1 if kind == "harmful" else 2
    return PromptSet(f"builtin:{kind}", tuple(pair[column] for pair in _builtin_document()))


# ---------------------------------------------------------------------------
# Loading


def load_prompts(
    source: str | os.PathLike,
    *,
    column: str | None = None,
    split: str = "train",
    limit: int | None = None,
    name: str | None = None,
) -> PromptSet:
    """Read a `PromptSet` from a file, a built-in name or a Hugging Face dataset.

    See the module docstring for the formats.  `column` picks the field in
    tabular and object data; `split` is used only for ``hf:`` sources; `limit`
    keeps at most the first `limit` prompts; `name` defaults to the file stem
    or the source string.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}.")

    text_source = os.fspath(source)
    if isinstance(source, str) and text_source.startswith("builtin:"):
        if column is not None:
            raise ConfigError(f"{text_source!r} has no columns; leave column unset.")
        prompt_set = builtin_prompts(text_source.removeprefix("builtin:"))
        prompts = list(prompt_set.prompts)
        default_name = prompt_set.name
    elif isinstance(source, str) and text_source.startswith("hf:"):
        prompts = _read_hf(text_source.removeprefix("hf:"), column=column, split=split)
        default_name = text_source
    else:
        path = Path(text_source)
        prompts = _read_file(path, column)
        default_name = path.stem

    if not prompts:
        raise DataError(f"no prompts found in {text_source}: check the column/format.")
    if limit is not None:
        prompts = prompts[:limit]
    return PromptSet(name or default_name, tuple(prompts))


def _read_file(path: Path, column: str | None) -> list[str]:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise DataError(
            f"Cannot read prompts from {str(path)!r}: unknown extension {suffix or '(none)'!r}. "
            f"Supported: {', '.join(SUPPORTED_EXTENSIONS)}, or the names builtin:harmful, "
            "builtin:harmless and hf:org/name."
        )
    if not path.exists():
        raise DataError(f"Prompt file {str(path)!r} does not exist.")
    if not path.is_file():
        raise DataError(f"Prompt source {str(path)!r} is not a file.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"Prompt file {str(path)!r} is not UTF-8 text: {exc}") from exc

    where = str(path)
    if not text.strip():
        return []  # reported by the caller as "no prompts found"
    if suffix == ".txt":
        if column is not None:
            raise ConfigError(f"{where!r} is plain text with no columns; leave column unset.")
        return [
            line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
        ]
    if suffix in (".csv", ".tsv"):
        return _read_table(text, "\t" if suffix == ".tsv" else ",", column, where)
    if suffix == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where!r} is not valid JSON: {exc}") from exc
        return _from_json_document(document, column, where)
    return _read_jsonl(text, column, where)


def _read_table(text: str, delimiter: str, column: str | None, where: str) -> list[str]:
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    columns = list(reader.fieldnames or [])
    if not columns:
        return []
    column = _pick_column(column, columns, where)
    values = [row.get(column) for row in reader]
    return _check_strings(values, where, f"column {column!r}, row")


def _from_json_document(document: Any, column: str | None, where: str) -> list[str]:
    if isinstance(document, list):
        return _from_json_list(document, column, where)
    if isinstance(document, dict):
        keys = [str(key) for key in document]
        if column is not None:
            if column not in document:
                raise DataError(
                    f"{where!r} has no key {column!r}.{suggest(column, keys)} Keys: {', '.join(keys)}."
                )
            key = column
        else:
            found = [k for k in JSON_LIST_KEYS if k in document]
            if not found:
                raise DataError(
                    f"{where!r} is a JSON object without a {' or '.join(map(repr, JSON_LIST_KEYS))} list. "
                    f"Keys: {', '.join(keys) or '(none)'}; pass column= to name the key holding the prompts."
                )
            key = found[0]
        values = document[key]
        if not isinstance(values, list):
            raise DataError(f"{where!r}: the value under {key!r} is a {type(values).__name__}, not a list.")
        return _check_strings(values, where, f"key {key!r}, entry")
    raise DataError(
        f"{where!r} holds a JSON {type(document).__name__}; expected a list of strings, a list of "
        "objects, or an object with a 'prompts' list."
    )


def _from_json_list(items: list[Any], column: str | None, where: str, label: str = "entry") -> list[str]:
    if not items:
        return []
    if all(isinstance(item, dict) for item in items):
        key_lists = [list(map(str, item)) for item in items]
        all_keys = list(dict.fromkeys(key for keys in key_lists for key in keys))
        if column is None:
            if len(all_keys) == 1:
                column = all_keys[0]
            else:
                raise DataError(
                    f"{where!r} holds objects with several keys ({', '.join(all_keys)}); "
                    "pass column= to say which holds the prompt."
                )
        for index, item in enumerate(items):
            if column not in item:
                raise DataError(
                    f"{where!r}: {label} {index} has no key {column!r}.{suggest(column, key_lists[index])} "
                    f"Keys: {', '.join(key_lists[index]) or '(none)'}."
                )
        return _check_strings([item[column] for item in items], where, f"key {column!r}, {label}")
    if any(isinstance(item, dict) for item in items):
        raise DataError(f"{where!r} mixes objects and plain values; use one or the other.")
    if column is not None:
        raise ConfigError(f"{where!r} holds plain strings, not objects; leave column unset.")
    return _check_strings(items, where, label)


def _read_jsonl(text: str, column: str | None, where: str) -> list[str]:
    items = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{where!r} line {line_number} is not valid JSON: {exc}") from exc
    return _from_json_list(items, column, where, label="record")


def _read_hf(dataset_name: str, *, column: str | None, split: str) -> list[str]:
    if not dataset_name:
        raise ConfigError("An 'hf:' source needs a dataset name, e.g. 'hf:org/name'.")
    try:
        import datasets  # optional dependency: only needed for hf: sources
    except ImportError as exc:
        raise DataError(
            f"Loading 'hf:{dataset_name}' needs the Hugging Face datasets package: pip install datasets"
        ) from exc
    where = f"hf:{dataset_name}"
    try:
        dataset = datasets.load_dataset(dataset_name, split=split)
    except Exception as exc:  # network, auth, unknown split: report as a data problem
        raise DataError(f"Could not load {where} (split {split!r}): {exc}") from exc
    columns = list(dataset.column_names)
    column = _pick_column(column, columns, where)
    return _check_strings(list(dataset[column]), where, f"column {column!r}, row")


def _pick_column(column: str | None, columns: list[str], where: str) -> str:
    if column is None:
        if len(columns) == 1:
            return columns[0]
        raise DataError(
            f"{where!r} has several columns ({', '.join(columns)}); pass column= to say which holds the "
            "prompt."
        )
    if column not in columns:
        raise DataError(
            f"{where!r} has no column {column!r}.{suggest(column, columns)} Available: {', '.join(columns)}."
        )
    return column


def _check_strings(values: list[Any], where: str, label: str) -> list[str]:
    """Strip each value, refusing non-strings and empty strings with their position."""
    result = []
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise DataError(
                f"{where!r}: {label} {index} is a {type(value).__name__} ({value!r}), not a string."
            )
        stripped = value.strip()
        if not stripped:
            raise DataError(f"{where!r}: {label} {index} is empty.")
        result.append(stripped)
    return result
