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


def command_lines(modules: dict[str, Path]) -> set[str]:
    """The command-line files: those run as programs (``python train.py``), and cli, their shared parsing."""
    return {name for name, path in modules.items() if 'if __name__ == "__main__":' in path.read_text()} | {"cli"}


# The model's files: the facade, its parts, and what describes them without a framework.
MODEL = {"SpeechModel", "encoder", "normalization", "classifier", "recognizer", "mixed_precision", "presets", "heads"}


def layer_breaks(modules: dict[str, Path]) -> list[str]:
    """Every import that breaks a layer rule: a library module importing cli (the command lines' parsing and
    errors: a library raises its own), or a file of the model (`MODEL`) importing devices (placement) or
    features (the training cache)."""
    breaks, programs = [], command_lines(modules)
    for name, path in modules.items():
        imported = imports(path, modules)
        if name not in programs and "cli" in imported:
            breaks.append(f"{name} imports cli")
        if name in MODEL:
            breaks += [f"{name} imports {module}" for module in sorted(imported & {"devices", "features"})]
    return breaks


def test_the_layers_hold():
    assert layer_breaks(project_modules()) == []


def test_a_broken_layer_is_found(tmp_path):
    """The rules fail on the breaks they were written for (the code before they held: runs and trainer imported cli, SpeechModel devices)."""
    modules = project_modules()
    broken = {}
    for name, line in (("runs", "import cli"), ("trainer", "from cli import installed"), ("SpeechModel", "from devices import dtype_policy"),
                       ("encoder", "import features")):
        broken[name] = tmp_path / f"{name}.py"
        broken[name].write_text(f"def late():\n    {line}\n" if name == "runs" else f"{line}\n")
    assert sorted(layer_breaks({**modules, **broken})) == ["SpeechModel imports devices", "encoder imports features", "runs imports cli", "trainer imports cli"]
