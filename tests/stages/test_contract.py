"""The stage contract: one ``stages/<command>.py`` per command with the same ``run`` signature,
one call from its CLI module, and a library that never talks to the terminal."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

from acdctool.cli.app import COMMANDS, app

SRC = Path(__file__).resolve().parents[2] / "src" / "acdctool"
MODULES = [name.replace("-", "_") for name in COMMANDS]


def test_every_registered_command_is_in_commands():
    import typer

    group = typer.main.get_command(app)
    assert set(group.commands) == set(COMMANDS)


@pytest.mark.parametrize("module", MODULES)
def test_stage_module_and_run_signature(module):
    path = SRC / "stages" / f"{module}.py"
    assert path.is_file() or (SRC / "stages" / module / "__init__.py").is_file(), f"no stages/{module}.py"
    stage = importlib.import_module(f"acdctool.stages.{module}")
    params = list(inspect.signature(stage.run).parameters.values())
    assert [p.name for p in params[:3]] == ["config", "inputs", "output"], module
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params[:3]), module
    rest = {p.name: p for p in params[3:]}
    assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in rest.values()), module
    assert rest["force"].default is False and rest["progress"].default is None, module
    assert inspect.isclass(stage.Result), module
    if module != "synth":  # synth reads nothing: inputs is None
        assert inspect.isclass(stage.Inputs), module


@pytest.mark.parametrize("module", MODULES)
def test_cli_module_makes_one_stage_call(module):
    text = (SRC / "cli" / f"{module}.py").read_text()
    assert f"from acdctool.stages import {module} as stage" in text, module
    assert len(re.findall(r"\bstage\.run\b", text)) == 1, module


def _library_files():
    """Every module but the command layer (``cli/``, and ``__main__.py`` that starts it)."""
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if "cli" not in rel.parts and rel.name != "__main__.py":
            yield path


def test_library_never_imports_typer_reads_argv_or_prints():
    offenders = []
    for path in _library_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(n == "typer" or n.startswith(("typer.", "click", "acdctool.cli")) for n in names):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} imports {names}")
            if isinstance(node, ast.Attribute) and node.attr == "argv" and getattr(node.value, "id", "") == "sys":
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} reads sys.argv")
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("print", "exit"):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} calls {node.func.id}()")
    assert not offenders, offenders


def test_library_never_imports_stages():
    offenders = []
    for path in _library_files():
        if "stages" in path.relative_to(SRC).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("acdctool.stages"):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
            if isinstance(node, ast.Import) and any(a.name.startswith("acdctool.stages") for a in node.names):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, offenders


def test_nothing_reexports_from_train_for_devices():
    """Device resolution lives in acdctool.conventions only."""
    from acdctool.train import dist

    assert not hasattr(dist, "resolve_device")
