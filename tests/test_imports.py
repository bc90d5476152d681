"""The import direction is clean: no module of the project imports one that imports it back, directly or through others."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def project_modules() -> dict[str, Path]:
    modules = {path.stem: path for path in ROOT.glob("*.py")}
    for path in (ROOT / "corpora").glob("*.py"):
        modules["corpora" if path.stem == "__init__" else f"corpora.{path.stem}"] = path
    return modules


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, at the top or inside functions; a package's own submodules count as themselves."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(modules)
            found |= submodules or ({node.module} & set(modules))
    return found


def test_no_module_imports_one_that_imports_it_back():
    modules = project_modules()
    graph = {name: imports(path, modules) - {name} for name, path in modules.items()}
    cycles = []
    for start in graph:
        seen, stack = set(), list(graph[start])
        while stack:
            module = stack.pop()
            if module not in seen:
                seen.add(module)
                stack += graph[module]
        if start in seen:
            cycles.append(start)
    assert cycles == []


def test_library_modules_raise_their_own_errors_not_the_command_lines():
    library = [name for name in project_modules() if name not in ("cli", "train", "infer", "evaluate", "export")]
    for name in library:
        source = project_modules()[name].read_text()
        assert "cli.UsageError" not in source and "from cli import UsageError" not in source, name
