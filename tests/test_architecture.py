"""The package keeps the shape docs/architecture.md draws (issue 25): no import circles,
and no module importing one from a lower layer. Every import counts, function-level ones
included: hiding a circle inside a function is still a circle."""
from __future__ import annotations

import ast
import re

from conftest import REPO

PACKAGE = REPO / "backup"


def layers() -> dict[str, int]:
    text = (REPO / "docs" / "architecture.md").read_text("utf-8")
    found = {}
    for number, names in re.findall(r"^layer (\d+)\s+(.+)$", text, re.M):
        for name in names.split():
            found[name] = int(number)
    return found


def imports() -> dict[str, set[str]]:
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph = {}
    for path in PACKAGE.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("backup."):
                deps.add(node.module.split(".")[1])
        graph[path.stem] = deps & modules - {path.stem}
    return graph


def test_the_readme_shows_the_same_map():
    block = re.compile(r"```\n(layer 0.*?)```", re.S)
    readme = block.search((REPO / "README.md").read_text("utf-8"))
    page = block.search((REPO / "docs" / "architecture.md").read_text("utf-8"))
    assert readme and page and readme.group(1) == page.group(1)


def test_every_module_has_a_layer():
    assert set(imports()) == set(layers())


def test_no_module_imports_one_from_a_lower_layer():
    layer = layers()
    wrong = [f"{module} (layer {layer[module]}) imports {dep} (layer {layer[dep]})"
             for module, deps in imports().items() for dep in deps if layer[dep] > layer[module]]
    assert wrong == []


def test_no_import_circles():
    graph = imports()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join(path[path.index(module):] + (module,))
        if module in done:
            return
        for dep in sorted(graph[module]):
            visit(dep, path + (module,))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())
