"""Importing the CLI (every ``acdctool.cli`` module, as ``--help`` and doctest collection do) must
not import torch: it takes seconds, and the parsing of options never needs it."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import acdctool.cli


def test_cli_modules_do_not_import_torch():
    names = sorted(f"acdctool.cli.{m.name}" for m in pkgutil.iter_modules(acdctool.cli.__path__))
    assert {"acdctool.cli.app", "acdctool.cli.train_seg", "acdctool.cli.refine"} <= set(names)
    code = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai', 'torchio'))))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []
