"""The package's layering, checked on every import statement (including those inside
functions) and once at run time:

    engine.core   the runtime: never imports engine.tools, Qt or the editor
    engine.tools  training, evaluation, benchmarks, the command line: never imports the editor
    editor        the window: may import both
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QT = ("PySide6", "PyQt5", "PyQt6", "pyqtgraph", "shiboken6")
FORBIDDEN = {
    "engine/core": ("engine.tools", "editor", *QT),
    "engine/tools": ("editor", *QT),
}


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names.append(str(node.args[0].value))
    return names


def _breaks(name: str, forbidden: tuple[str, ...]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_across_the_rules(package: str) -> None:
    files = sorted((ROOT / package).glob("*.py"))
    assert files
    bad = [f"{f.relative_to(ROOT)} imports {name}" for f in files for name in imported_modules(f)
           if _breaks(name, FORBIDDEN[package])]
    assert not bad, "\n".join(bad)


def test_the_rule_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from editor import app\n    import importlib\n"
                 "    importlib.import_module('PySide6.QtGui')\n")
    names = imported_modules(f)
    assert _breaks("editor.app", FORBIDDEN["engine/tools"])
    assert "editor" in names
    assert "PySide6.QtGui" in names


def test_importing_the_whole_engine_loads_no_qt_and_no_editor() -> None:
    modules = [f"engine.{p.parent.name}.{p.stem}" for p in sorted((ROOT / "engine").glob("*/*.py"))
               if p.stem != "__init__"]
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('editor', 'PySide6', 'pyqtgraph')]\n"
            "print(bad)\nsys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
