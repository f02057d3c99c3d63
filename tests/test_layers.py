"""The layering rule: stages and the CLI import the library, never the reverse (``acdctool.correct``
holds refine's algorithm so that ``predict`` can share it without importing a stage)."""

from __future__ import annotations

import ast
from pathlib import Path

import acdctool

SRC = Path(acdctool.__file__).resolve().parent
UPPER = ("acdctool.stages", "acdctool.cli")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_library_modules_import_no_stage_and_no_cli():
    top = ("stages", "cli", "__main__.py")  # ``python -m acdctool`` runs the CLI
    library = [p for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] not in top]
    assert SRC / "correct" / "gate.py" in library and len(library) > 20
    bad = {str(p.relative_to(SRC)): sorted(n for n in _imports(p) if n.startswith(UPPER)) for p in library}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_check_sees_a_stage_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from acdctool.stages.refine import assign\nimport acdctool.cli.app\n")
    assert {"acdctool.stages.refine", "acdctool.cli.app"} <= _imports(probe)
