"""`lmforge/` is the shared floor (manifest, tracking tags, lineage, recipes, services) plus the
command line; the floor imports nothing from `lmforge.flows`, so flows build on it and never
the other way round. Only the command-line layer (the CLI, the config-reference writer) may
reach into the flows, as it is where they are started from."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

LMFORGE = Path(__file__).resolve().parents[1] / "lmforge"
COMMAND_LINE_LAYER = {"cli", "config_reference"}
FLOOR = sorted(
    path.stem for path in LMFORGE.glob("*.py") if path.stem not in COMMAND_LINE_LAYER
)


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` anywhere in the file names, function-local ones included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_floor_module_names_a_flow_module():
    offending = {
        name: sorted(m for m in imported_modules(LMFORGE / f"{name}.py")
                     if m.startswith("lmforge.flows"))
        for name in FLOOR
    }
    assert {name: mods for name, mods in offending.items() if mods} == {}


def test_importing_every_floor_module_loads_no_flow_module():
    # A fresh interpreter, so what this test session already imported cannot hide anything.
    script = (
        "import importlib, sys\n"
        f"for name in {FLOOR!r}:\n"
        "    importlib.import_module('lmforge' if name == '__init__' else 'lmforge.' + name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('lmforge.flows')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
