"""The ``acdctool`` Typer app: wires one thin module per command.

Command modules import only typer and the config dataclasses at import time; torch, monai and
the library are imported inside each command, so ``--help`` and tab completion stay fast.
"""

from __future__ import annotations

import typer

from acdctool import __version__
from acdctool.cli import eval as eval_
from acdctool.cli import export, gen_seg, info, make_3gram, prep, refine, synth, train_nvae, train_seg

app = typer.Typer(
    name="acdctool",
    help="Cardiac MRI segmentation research on ACDC: preprocess, segment, correct with an NVAE shape model, evaluate.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

app.command("synth")(synth.synth)
app.command("prep")(prep.prep)
app.command("info")(info.info)
app.command("train-seg")(train_seg.train_seg)
app.command("gen-seg")(gen_seg.gen_seg)
app.command("train-nvae")(train_nvae.train_nvae)
app.command("make-3gram")(make_3gram.make_3gram)
app.command("refine")(refine.refine)
app.command("eval")(eval_.eval_cmd)
app.command("export")(export.export)


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
    """Cardiac MRI segmentation research on ACDC: preprocess, segment, correct with an NVAE shape model, evaluate.

    Exit codes: 0 ok, 1 unexpected error, 2 usage, 65 bad input data, 66 input missing,
    73 output cannot be created or exists (use --force), 130 interrupted.
    """


def main() -> None:
    app(prog_name="acdctool")
