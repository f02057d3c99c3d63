"""``acdctool refine``: correct segmentations with the NVAE shape model (or morphology), gated."""

from __future__ import annotations

from pathlib import Path

import typer

from acdctool.cli.common import FORCE, QUIET, log, make_config, parse_numbers, print_path, progress, run
from acdctool.config import RefineConfig

_D = RefineConfig()


def refine(
    seg: Path = typer.Argument(..., help="gen-seg output (seg.h5), or make-3gram output with --context 3gram."),
    output: Path = typer.Option(..., "--output", "-o", help="Refined slice file (.h5)."),
    nvae: Path | None = typer.Option(
        None, "--nvae", help="NVAE checkpoint (train-nvae best.pt); needed by --method nvae."
    ),
    method: str = typer.Option(
        _D.method, "--method", help="nvae, or morph (largest component + fill holes: the baseline)."
    ),
    context: str = typer.Option(_D.context, "--context", help="none (single mask) or 3gram (previous/current/next)."),
    gate: str = typer.Option(
        _D.gate, "--gate", help="anatomy: only replace anatomically invalid slices; none: replace all."
    ),
    partial: str = typer.Option(
        ",".join(f"{t:g}" for t in _D.partial),
        "--partial",
        help="Partial-edit thresholds (comma-separated; none: whole reconstructions only).",
    ),
    samples: int = typer.Option(_D.samples, "--samples", help="Extra sampled NVAE candidates per invalid slice."),
    temperature: float = typer.Option(_D.temperature, "--temperature", help="Posterior std scale when sampling."),
    min_agreement: float = typer.Option(
        _D.min_agreement, "--min-agreement", help="Least Dice with the input for a replacement."
    ),
    polish: bool = typer.Option(
        _D.polish, "--polish/--no-polish", help="Also offer each NVAE candidate after the morphological clean-up."
    ),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", help="Slices per batch."),
    device: str = typer.Option(_D.device, "--device", help="auto, cpu or cuda."),
    seed: int = typer.Option(_D.seed, "--seed", help="Seed of the sampled candidates."),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Correct segmentations with the NVAE, gated by anatomy.

    Anatomically invalid slices are replaced by the closest valid candidate (partial edits
    towards the NVAE reconstruction, the reconstruction itself and samples, or the
    morphological clean-up); valid slices are kept bit-identical.

    Example: acdctool refine seg.h5 --nvae runs/nvae/best.pt -o refined.h5 --samples 8
    """
    from acdctool.io.slices import SliceFile
    from acdctool.stages.refine import refine as run_refine

    config = make_config(
        RefineConfig,
        method=method,
        context=context,
        gate=gate,
        partial=parse_numbers(partial, "--partial"),
        samples=samples,
        temperature=temperature,
        min_agreement=min_agreement,
        polish=polish,
        batch_size=batch_size,
        device=device,
        seed=seed,
    )

    def count() -> int:
        with SliceFile(seg) as f:
            return len(f)

    total = run(count)
    with progress("refine", total, quiet) as advance:
        result = run(run_refine, seg, output, config, nvae=nvae, force=force, on_rows=lambda n: advance(advance=n))
    counts = ", ".join(f"{v} {k}" for k, v in result.counts.items() if v)
    log(
        f"wrote {result.rows} rows to {output} ({counts}); invalid slices {result.invalid_before} → "
        f"{result.invalid_after}",
        quiet,
    )
    print_path(output)
