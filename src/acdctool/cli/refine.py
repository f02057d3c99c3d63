"""``acdctool refine``: correct segmentations with the NVAE shape model (or morphology), gated."""

from __future__ import annotations

from pathlib import Path

import typer

from acdctool.cli.common import FORCE, QUIET, call, log, make_config, parse_numbers, print_path, provenance, reporter
from acdctool.config import Context, Gate, Method, RefineConfig
from acdctool.conventions import Device

_D = RefineConfig()
_PARTIAL = ",".join(f"{t:g}" for t in _D.partial)


def refine(
    seg: Path = typer.Argument(
        ..., metavar="SEG", help="gen-seg output (seg.h5), or make-3gram output with --context 3gram."
    ),
    output: Path = typer.Option(..., "--output", "-o", metavar="FILE", help="Refined slice file (.h5)."),
    nvae: Path | None = typer.Option(
        None, "--nvae", metavar="CKPT", help="NVAE checkpoint (train-nvae best.pt); needed by --method nvae."
    ),
    method: Method = typer.Option(
        Method(_D.method), "--method", help="nvae, or morph (largest component + fill holes: the baseline)."
    ),
    context: Context = typer.Option(
        Context(_D.context), "--context", help="none (single mask) or 3gram (previous/current/next)."
    ),
    gate: Gate = typer.Option(
        Gate(_D.gate), "--gate", help="anatomy: only replace anatomically invalid slices; none: replace all."
    ),
    partial: str = typer.Option(
        _PARTIAL,
        "--partial",
        metavar="T,T,...",
        help="Partial-edit thresholds (comma-separated; none: whole reconstructions only).",
    ),
    samples: int = typer.Option(
        _D.samples, "--samples", metavar="N", help="Extra sampled NVAE candidates per invalid slice."
    ),
    temperature: float = typer.Option(
        _D.temperature, "--temperature", metavar="T", help="Posterior std scale when sampling."
    ),
    min_agreement: float = typer.Option(
        _D.min_agreement, "--min-agreement", metavar="DICE", help="Least Dice with the input for a replacement."
    ),
    polish: bool = typer.Option(
        _D.polish, "--polish/--no-polish", help="Also offer each NVAE candidate after the morphological clean-up."
    ),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", metavar="N", help="Slices per batch."),
    device: Device = typer.Option(Device(_D.device), "--device", help="auto: CUDA when available."),
    seed: int = typer.Option(_D.seed, "--seed", metavar="N", help="Seed of the sampled candidates."),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Correct segmentations with the NVAE, gated by anatomy.

    Anatomically invalid slices are replaced by the closest valid candidate (partial edits
    towards the NVAE reconstruction, the reconstruction itself and samples, or the
    morphological clean-up); valid slices are kept bit-identical.

    \b
    Example:
      acdctool refine seg.h5 --nvae runs/nvae/best.pt -o refined.h5 --samples 8
    """
    config = make_config(
        RefineConfig,
        method=method.value,
        context=context.value,
        gate=gate.value,
        partial=parse_numbers(partial, "--partial"),
        samples=samples,
        temperature=temperature,
        min_agreement=min_agreement,
        polish=polish,
        batch_size=batch_size,
        device=device.value,
        seed=seed,
    )

    # Imported after the options are checked: a bad option fails before torch loads.
    from acdctool.stages import refine as stage

    inputs = stage.Inputs(seg, nvae, provenance=provenance(seg, nvae))
    with reporter("refine", quiet) as progress:
        result = call(stage.run, config, inputs, output, force=force, progress=progress)
    counts = ", ".join(f"{v} {k}" for k, v in result.counts.items() if v)
    log(
        f"wrote {result.rows} rows to {output} ({counts}); invalid slices {result.invalid_before} → "
        f"{result.invalid_after}",
        quiet,
    )
    print_path(output)
