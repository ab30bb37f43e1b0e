"""No import cycles: between modules, between openchat_core's subpackages, and between the top-level packages.

Reads every module's source (nothing is imported) and follows every import statement, including
those inside functions: a lazy import only hides a cycle from the interpreter, not from a reader.
Imports under `if TYPE_CHECKING:` are left out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("openchat_core", "openchat_cli", "tasks", "flows", "storage")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module this one imports, resolved to the longest known dotted name."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(ast.parse(path.read_text(), str(path)), name, path.name == "__init__.py"):
            parts = imported.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != name:
                targets.add(".".join(parts))
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one node (Tarjan), as a readable path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
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
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def _collapse(graph: dict[str, set[str]], group) -> dict[str, set[str]]:
    collapsed: dict[str, set[str]] = {}
    for source, targets in graph.items():
        collapsed.setdefault(group(source), set()).update(group(t) for t in targets if group(t) != group(source))
    return collapsed


def _core_subpackage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "openchat_core" else parts[0]


def test_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_relative_and_type_checking_imports_are_resolved():
    tree = ast.parse("from typing import TYPE_CHECKING\nfrom . import x\nfrom .y import z\nif TYPE_CHECKING:\n    import w\n")
    assert _imports(tree, "p.q", is_package=False) >= {"p", "p.x", "p.y", "p.y.z"}
    assert "w" not in _imports(tree, "p.q", is_package=False)


def test_no_module_imports_itself_back():
    assert _cycles(_graph()) == []


def test_openchat_core_subpackages_import_one_way():
    assert _cycles(_collapse(_graph(), _core_subpackage)) == []


def test_top_level_packages_import_one_way():
    assert _cycles(_collapse(_graph(), lambda m: m.split(".")[0])) == []
