"""The layers of docs/ARCHITECTURE.md hold: no module imports from a layer above its own, and imports form no
cycle (lazy imports inside functions included in both: a cycle hidden in a function is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import slidr

ROOT = Path(slidr.__file__).parent
# lowest first; a module belongs to the layer of its longest matching prefix
LAYERS = [
    ("foundation", ("slidr", "slidr.config", "slidr.errors", "slidr.registry", "slidr.utils")),
    ("data", ("slidr.data",)),
    ("models", ("slidr.models",)),
    ("engine", ("slidr.engine",)),
    ("methods", ("slidr.methods",)),
    ("analysis", ("slidr.analysis",)),
    ("interface", ("slidr.cli", "slidr.bench", "slidr.demo")),
]


def _layer(module: str) -> int:
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1]


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(), filename=str(path))
    return found


def _imports(tree: ast.AST, top_level_only: bool) -> list[tuple[str, int]]:
    """Imported slidr modules; ``from package import submodule`` names the submodule."""
    nodes = tree.body if top_level_only else list(ast.walk(tree))  # type: ignore[attr-defined]
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "slidr":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.append((submodule if (ROOT.parent / submodule.replace(".", "/")).with_suffix(".py").is_file()
                              or (ROOT.parent / submodule.replace(".", "/")).is_dir() else node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "slidr"]
    return found


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for module, tree in _modules().items():
        for imported, line in _imports(tree, top_level_only=False):
            if _layer(imported) > _layer(module):
                upward.append(f"{module}:{line} ({LAYERS[_layer(module)][0]}) imports {imported} "
                              f"({LAYERS[_layer(imported)][0]})")
    assert not upward, "\n".join(upward)


def test_imports_have_no_cycle():
    modules = _modules()

    def resolve(name: str) -> str:  # "from slidr.methods import losses" names a module through its package
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {module: {resolve(imported) for imported, _ in _imports(tree, top_level_only=False)} - {module}
             for module, tree in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_layer_table_knows_every_package():
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    known = {prefix.split(".")[1] for _, prefixes in LAYERS for prefix in prefixes if "." in prefix}
    assert packages <= known, f"packages missing from the layer table: {packages - known}"
