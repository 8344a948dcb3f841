"""The package's import graph, function-local imports included, read from the source with `ast`.

Python runs a function-local import only when the function is called, so a loop made of them does
not fail at start-up; it still means two modules cannot be understood (or moved) one without the
other.  This walks every module of the package, follows every `import` / `from ... import` outside
`if TYPE_CHECKING:` blocks, and resolves each to the most specific module of the package it names.

Run as a script for the numbers: `python tests/import_graph.py` (loops, local imports, largest files).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "steerpeft"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


@dataclass
class ImportGraph:
    """Edges module -> modules it imports; `local` counts imports made inside functions."""

    edges: dict[str, set[str]] = field(default_factory=dict)
    local: dict[str, int] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def cycles(self) -> list[list[str]]:
        """Strongly connected components of more than one module (or a module importing itself)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        found: list[list[str]] = []
        counter = [0]

        def visit(node: str) -> None:
            index[node] = low[node] = counter[0]
            counter[0] += 1
            stack.append(node)
            on_stack.add(node)
            for target in sorted(self.edges.get(node, ())):
                if target not in index:
                    visit(target)
                    low[node] = min(low[node], low[target])
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in self.edges.get(node, ()):
                    found.append(sorted(component))

        sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
        for node in sorted(self.edges):
            if node not in index:
                visit(node)
        return found


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, current: str, is_package: bool) -> list[tuple[str, list[str], bool]]:
    """(module, imported names, inside a function) for every import outside TYPE_CHECKING blocks."""
    found: list[tuple[str, list[str], bool]] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    walk(other, in_function)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append((alias.name, [], in_function))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = current.split(".") if is_package else current.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                found.append((base, [alias.name for alias in child.names], in_function))
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, False)
    return found


def build_graph(root: Path = ROOT) -> ImportGraph:
    modules = {module_name(path, root): path for path in root.rglob("*.py")}
    graph = ImportGraph()
    for name, path in modules.items():
        source = path.read_text(encoding="utf-8")
        graph.lines[name] = source.count("\n")
        graph.edges.setdefault(name, set())
        for target, names, in_function in _imports(ast.parse(source), name, path.name == "__init__.py"):
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                continue
            resolved = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules] or [target]
            for module in resolved:
                if module in modules and module != name:
                    graph.edges[name].add(module)
            if in_function:
                graph.local[name] = graph.local.get(name, 0) + 1
    return graph


if __name__ == "__main__":
    graph = build_graph()
    loops = graph.cycles()
    print(f"import loops (function-local imports counted): {len(loops)}")
    for loop in loops:
        print(f"  {len(loop)} modules: {', '.join(loop)}")
    print(f"function-local imports of package modules: {sum(graph.local.values())}")
    for name, count in sorted(graph.local.items(), key=lambda item: -item[1])[:8]:
        print(f"  {count:3d} {name}")
    print("largest modules (lines):")
    for name, count in sorted(graph.lines.items(), key=lambda item: -item[1])[:8]:
        print(f"  {count:4d} {name}")
