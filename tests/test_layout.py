"""The package's layering, read from the source: no import cycle among seed_hf's modules (every
import statement counts: module-level, inside functions and under ``TYPE_CHECKING``), and the
library never imports its command-line layer (``seed_hf.cli`` and the scripts, ``seed_hf.scripts``)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "seed_hf"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The seed_hf module ``name`` refers to (a package's __init__, or the module itself)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every seed_hf module ``module`` imports, at any depth of its code."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names if alias.name.split(".")[0] == "seed_hf"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "seed_hf":
                prefix = node.module
            else:
                continue
            # `from . import x` / `from .data import rows` import submodules where they exist
            targets = [
                f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
                for alias in node.names
            ]
        else:
            continue
        found |= {m for t in targets if (m := _resolve(t, modules)) and m != module}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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
            visit(node)
    return components


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_reader_sees_function_level_and_type_checking_imports(tmp_path):
    code = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import X\n"
        "def f():\n    from ..c import y\n    from . import d\n"
    )
    (tmp_path / "a.py").write_text(code)
    modules = {"seed_hf.p.a": tmp_path / "a.py", "seed_hf.p.b": Path(), "seed_hf.c": Path(), "seed_hf.p.d": Path(),
               "seed_hf.p": Path()}  # fmt: skip
    assert _imports("seed_hf.p.a", tmp_path / "a.py", modules) == {"seed_hf.p.b", "seed_hf.c", "seed_hf.p.d"}


def test_no_import_cycle_in_seed_hf():
    graph = _graph()
    assert len(graph) > 20  # the reader found the package
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


CLI_LAYER = ("seed_hf.cli", "seed_hf.scripts", "seed_hf.__main__")


def _in_cli_layer(module: str) -> bool:
    return any(module == top or module.startswith(top + ".") for top in CLI_LAYER)


def test_the_library_never_imports_the_cli_layer():
    offenders = {
        module: sorted(m for m in imported if _in_cli_layer(m))
        for module, imported in _graph().items()
        if not _in_cli_layer(module)
    }
    offenders = {module: cli for module, cli in offenders.items() if cli}
    assert not offenders, f"library modules importing seed_hf.cli: {offenders}"


MAX_MODULE_LINES = 400


def test_no_module_over_400_lines():
    """One concept a module: the package and the repository's tooling (tools/) stay readable."""
    files = sorted(PACKAGE.rglob("*.py")) + sorted((PACKAGE.parent / "tools").glob("*.py"))
    assert len(files) > 20
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in files
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_module_shadows_the_standard_library():
    """``seed_hf/.../queue.py`` once shadowed ``queue`` for anything run from its folder."""
    shadowing = sorted(
        str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py") if p.stem in sys.stdlib_module_names
    )
    assert not shadowing, shadowing
