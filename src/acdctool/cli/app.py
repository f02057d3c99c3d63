"""The ``acdctool`` Typer app: wires one thin module per command.

Command ``X`` is ``cli/X.py`` (options → config → one call to :func:`acdctool.stages.X.run`).
Command modules import only typer, the config dataclasses and :mod:`acdctool.conventions` at
import time; torch, monai and the library are imported inside each command, so ``--help``,
tab completion and option errors (exit 2) stay fast.
"""

from __future__ import annotations

from collections.abc import Callable

import typer

from acdctool import __version__
from acdctool.cli import eval as eval_
from acdctool.cli import (
    export,
    export_model,
    gen_seg,
    import_seg,
    info,
    make_3gram,
    predict,
    prep,
    qc,
    qc_calibrate,
    refine,
    synth,
    train_nvae,
    train_seg,
)
from acdctool.cli.common import Command, err_console, install_signal_handlers, interrupted_message
from acdctool.errors import Interrupted, exit_codes_line

app = typer.Typer(
    name="acdctool",
    help="Cardiac MRI segmentation research on ACDC: preprocess, segment, correct with an NVAE shape model, evaluate.",
    epilog=f"Exit codes: {exit_codes_line(', ')}.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

COMMANDS: dict[str, Callable[..., None]] = {
    "synth": synth.synth,
    "prep": prep.prep,
    "info": info.info,
    "train-seg": train_seg.train_seg,
    "gen-seg": gen_seg.gen_seg,
    "train-nvae": train_nvae.train_nvae,
    "make-3gram": make_3gram.make_3gram,
    "refine": refine.refine,
    "eval": eval_.eval_cmd,
    "qc": qc.qc,
    "qc-calibrate": qc_calibrate.qc_calibrate,
    "export": export.export,
    "import-seg": import_seg.import_seg,
    "predict": predict.predict,
    "export-model": export_model.export_model,
}
"""Command name → its function in ``cli/<name>.py``; the stage is ``acdctool.stages.<name>`` (``-`` → ``_``)."""
for _name, _fn in COMMANDS.items():
    app.command(_name, cls=Command)(_fn)


def _version(value: bool) -> None:
    if value:
        print(f"acdctool {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Cardiac MRI segmentation research on ACDC: preprocess, segment, correct with an NVAE shape model, evaluate."""


def main() -> None:
    """The ``acdctool`` entry point: SIGINT, SIGTERM and SIGHUP stop every command cleanly."""
    signals = install_signal_handlers()
    try:
        app(prog_name="acdctool")
    except Interrupted as exc:  # a signal outside a stage (e.g. while importing torch)
        signals.reported = True
        _stopped(exc.signum)
    except SystemExit:
        pending = signals.unreported()
        if pending is not None:  # a signal that something swallowed still stops the command
            signals.finish()
            _stopped(pending)
        raise
    finally:
        signals.finish()  # the exit status is decided: late signals are ignored


def _stopped(signum: int) -> None:
    err_console.print(f"[bold red]acdctool: error:[/] {interrupted_message(signum)}", highlight=False)
    raise SystemExit(128 + signum) from None
