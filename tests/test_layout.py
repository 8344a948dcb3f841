"""The package's shape: no import loop (function-local imports included) and small modules."""

from __future__ import annotations

import pytest
from import_graph import build_graph

MAX_MODULE_LINES = 400
"""A module past this many lines holds more than one job: split it."""


@pytest.fixture(scope="module")
def graph():
    return build_graph()


def test_there_is_no_import_loop_even_through_function_local_imports(graph) -> None:
    assert graph.cycles() == []


def test_the_walk_sees_function_local_imports(tmp_path) -> None:
    """The check could fail: a loop made only of a function-local import is found."""
    package = tmp_path / "steerpeft"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from steerpeft import b\n")
    (package / "b.py").write_text("def later():\n    from steerpeft.a import something\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from steerpeft import a\n"
    )
    found = build_graph(package)
    assert found.cycles() == [["steerpeft.a", "steerpeft.b"]]
    assert found.local == {"steerpeft.b": 1}
    assert "steerpeft.a" not in found.edges["steerpeft.c"]  # imports for type checkers only do not count


def test_no_module_is_over_the_size_limit(graph) -> None:
    large = {name: lines for name, lines in graph.lines.items() if lines > MAX_MODULE_LINES}
    assert large == {}
