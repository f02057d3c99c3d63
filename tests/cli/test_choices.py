"""Terminal polish: choice options are enums (complete, fail fast), metavars name things, examples never wrap."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import typer
from typer.testing import CliRunner

from acdctool.cli.app import COMMANDS, app
from acdctool.config import (
    Arch,
    Choose,
    Context,
    Gate,
    ImportRoi,
    LrSchedule,
    MaskInterp,
    Masks,
    Method,
    NonFinite,
    NvaeInput,
    PatientDice,
    Precision,
    Roi,
    choices,
)
from acdctool.conventions import Device

runner = CliRunner()
GROUP = typer.main.get_command(app)

CHOICES = {
    ("prep", "roi"): Roi,
    ("prep", "mask_interp"): MaskInterp,
    ("prep", "nonfinite"): NonFinite,
    ("train-seg", "arch"): Arch,
    ("train-seg", "lr_schedule"): LrSchedule,
    ("train-seg", "device"): Device,
    ("gen-seg", "device"): Device,
    ("train-nvae", "input"): NvaeInput,
    ("train-nvae", "context"): Context,
    ("train-nvae", "device"): Device,
    ("train-nvae", "precision"): Precision,
    ("make-3gram", "source"): Masks,
    ("refine", "method"): Method,
    ("refine", "context"): Context,
    ("refine", "gate"): Gate,
    ("refine", "choose"): Choose,
    ("refine", "device"): Device,
    ("export", "array"): Masks,
    ("import-seg", "roi"): ImportRoi,
    ("import-seg", "mask_interp"): MaskInterp,
    ("predict", "device"): Device,
    ("predict", "choose"): Choose,
    ("qc", "device"): Device,
    ("qc", "patient_dice"): PatientDice,
    ("qc-calibrate", "device"): Device,
}
BAD = [
    ["prep", "ACDC", "-o", "x.h5", "--roi", "centre"],
    ["prep", "ACDC", "-o", "x.h5", "--mask-interp", "linear"],
    ["prep", "ACDC", "-o", "x.h5", "--nonfinite", "ignore"],
    ["train-seg", "s.h5", "-o", "run", "--arch", "vnet"],
    ["train-seg", "s.h5", "-o", "run", "--lr-schedule", "step"],
    ["train-seg", "s.h5", "-o", "run", "--device", "gpu"],
    ["gen-seg", "s.h5", "-m", "a.pt", "-o", "seg.h5", "--device", "tpu"],
    ["train-nvae", "s.h5", "-o", "run", "--input", "pred"],
    ["train-nvae", "s.h5", "-o", "run", "--context", "2gram"],
    ["train-nvae", "s.h5", "-o", "run", "--precision", "fp16"],
    ["make-3gram", "seg.h5", "-o", "s3.h5", "--source", "image"],
    ["refine", "seg.h5", "-o", "r.h5", "--method", "nvea"],
    ["refine", "seg.h5", "-o", "r.h5", "--gate", "all"],
    ["refine", "seg.h5", "-o", "r.h5", "--choose", "dice"],
    ["export", "seg.h5", "--like", "ACDC", "-o", "nifti", "--array", "probs"],
    ["import-seg", "preds", "--roi", "gt", "--images", "img", "-o", "seg.h5"],
    ["predict", "img", "-m", "a.pt", "-o", "out", "--device", "tpu"],
    ["predict", "img", "-m", "a.pt", "-o", "out", "--choose", "dice"],
    ["qc", "seg.h5", "-o", "qc", "--device", "gpu"],
    ["qc", "seg.h5", "-o", "qc", "--patient-dice", "pixels"],
]


@pytest.mark.parametrize("key", sorted(CHOICES), ids=lambda k: f"{k[0]}--{k[1]}")
def test_choice_options_offer_the_config_values(key):
    command, name = key
    (param,) = [p for p in GROUP.commands[command].params if p.name == name]
    assert tuple(str(c.value) for c in param.type_descriptor.choices) == choices(CHOICES[key])
    ctx = GROUP.commands[command].make_context(command, ["x"] * 0, resilient_parsing=True)
    assert [c.value for c in param.shell_complete(ctx, "")] == list(choices(CHOICES[key]))


def test_every_choice_option_is_covered():
    """An option whose type is a choice must be in CHOICES (and so checked above)."""
    found = {
        (name, p.name)
        for name, cmd in GROUP.commands.items()
        for p in cmd.params
        if getattr(getattr(p, "type_descriptor", None), "is_choice", False)
    }
    assert found == set(CHOICES)


def test_bad_choice_exits_2_before_torch_is_imported():
    """Typos fail while parsing options: exit 2, naming the option, with no torch import."""
    code = textwrap.dedent(
        f"""
        import contextlib, io, json, sys
        from acdctool.cli.app import main
        out = []
        for args in {BAD!r}:
            sys.argv = ["acdctool", *args]
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                try:
                    main()
                except SystemExit as exc:
                    out.append((exc.code, err.getvalue()))
        print(json.dumps({{"results": out, "torch": "torch" in sys.modules}}))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert not report["torch"]
    for args, (exit_code, stderr) in zip(BAD, report["results"], strict=True):
        option = next(a for a in args if a.startswith("--") and a != "--like")
        assert exit_code == 2 and option in stderr and "is not one of" in stderr, (args, stderr)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_has_no_python_types_and_unwrapped_examples(command):
    res = runner.invoke(app, [command, "--help"], terminal_width=80)
    assert res.exit_code == 0
    for python_type in ("<path>", "<Path>", "<int>", "<float>", "<str>", "<list[", "<bool>"):
        assert python_type not in res.output, (command, python_type)
    doc = GROUP.commands[command].help or ""
    examples = [line.strip() for line in doc.partition("Example:")[2].splitlines() if line.strip()]
    assert examples and all(line.startswith(("acdctool ", "torchrun ")) for line in examples), command
    shown = {line.strip(): line for line in res.output.splitlines()}
    for line in examples:
        assert line in shown, f"{command}: example wrapped or missing: {line}"
        assert len(shown[line]) <= 80, f"{command}: example wider than 80 columns: {line}"
