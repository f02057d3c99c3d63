"""``acdctool refine``: correct segmentations with the NVAE shape model (or morphology), gated."""

from __future__ import annotations

from pathlib import Path

import typer

from acdctool.cli.common import FORCE, QUIET, call, log, make_config, parse_numbers, print_path, provenance, reporter
from acdctool.config import Choose, Context, Family, Gate, Method, RefineConfig, choices
from acdctool.conventions import Device

_D = RefineConfig()
_PARTIAL = ",".join(f"{t:g}" for t in _D.partial)
_STEPS = ",".join(f"{t:g}" for t in _D.latent_steps)
_SMOOTH = ",".join(f"{t:g}" for t in _D.smooth)
_FAMILIES = ",".join(_D.candidates)


def refine(
    seg: Path = typer.Argument(
        ..., metavar="SEG", help="gen-seg output (seg.h5), or make-3gram output with --context 3gram."
    ),
    output: Path = typer.Option(..., "--output", "-o", metavar="FILE", help="Refined slice file (.h5)."),
    nvae: list[Path] = typer.Option(
        [],
        "--nvae",
        metavar="CKPT",
        help="NVAE checkpoint (train-nvae best.pt), repeatable: one per fold; each patient gets one that "
        "never trained on it. Needed by --method nvae.",
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
    choose: Choose = typer.Option(
        Choose(_D.choose),
        "--choose",
        help="Rank valid candidates by Dice with the input mask, or by agreement with the segmentation's "
        "softmax (soft-dice, loglik: need gen-seg --save-probs).",
    ),
    candidates: str = typer.Option(
        _FAMILIES,
        "--candidates",
        metavar="FAMILY,...",
        help=f"Candidate families offered to the gate ({', '.join(choices(Family))}).",
    ),
    fallback: str = typer.Option(
        ",".join(_D.fallback),
        "--fallback",
        metavar="FAMILY,...",
        help="Families offered only where --candidates give no valid one; empty (the empty slice), then "
        'repair (minimal pixel edits, at every position) after the others ("": none).',
    ),
    fallback_positions: str = typer.Option(
        ",".join(_D.fallback_positions),
        "--fallback-positions",
        metavar="POS,...",
        help="Slice positions the fallback may correct (base, mid, apex: thirds of the stack; repair: every position).",
    ),
    partial: str = typer.Option(
        _PARTIAL,
        "--partial",
        metavar="T,T,...",
        help="Partial-edit thresholds (comma-separated; none: whole reconstructions only).",
    ),
    latent_steps: str = typer.Option(
        _STEPS,
        "--latent-steps",
        metavar="A,A,...",
        help="Latent steps: α of each decoding between the input's encoding (0) and the prior mean (1).",
    ),
    smooth: str = typer.Option(
        _SMOOTH,
        "--smooth",
        metavar="SIGMA,...",
        help="Family smooth: Gaussian σ (px) of each smoothed-softmax candidate (needs probs).",
    ),
    empty_confidence: float = typer.Option(
        _D.empty_confidence,
        "--empty-confidence",
        metavar="P",
        help="Family empty: empty a stack-end slice nothing else fixed when its foreground's mean "
        "softmax probability is below P (needs probs; 0: never).",
    ),
    repair_agreement: float = typer.Option(
        _D.repair_agreement,
        "--repair-agreement",
        metavar="R",
        help="Family repair: mend a slice nothing else fixed by minimal pixel edits when their expected "
        "Dice under the softmax is at least R times the input's (needs probs; 0: any valid repair).",
    ),
    samples: int = typer.Option(
        _D.samples, "--samples", metavar="N", help="Extra sampled NVAE candidates per invalid slice."
    ),
    temperature: float = typer.Option(
        _D.temperature, "--temperature", metavar="T", help="Posterior std scale when sampling."
    ),
    min_agreement: float = typer.Option(
        _D.min_agreement,
        "--min-agreement",
        metavar="SCORE",
        help="Least score under --choose (0..1) for a replacement.",
    ),
    min_structure_dice: float = typer.Option(
        _D.min_structure_dice,
        "--min-structure-dice",
        metavar="DICE",
        help="Least Dice with the input of each structure a replacement keeps (0..1).",
    ),
    polish: bool = typer.Option(
        _D.polish, "--polish/--no-polish", help="Also offer each NVAE candidate after the morphological clean-up."
    ),
    allow_seen: bool = typer.Option(
        _D.allow_seen,
        "--allow-seen",
        help="Refine patients an NVAE trained on instead of refusing (recorded per row).",
    ),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", metavar="N", help="Slices per batch."),
    device: Device = typer.Option(Device(_D.device), "--device", help="auto: CUDA when available."),
    seed: int = typer.Option(_D.seed, "--seed", metavar="N", help="Seed of the sampled candidates."),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Correct segmentations with the NVAE, gated by anatomy.

    Anatomically valid slices are kept bit-identical; an invalid one is replaced by the valid
    candidate that agrees best with the segmentation (--choose), among partial edits towards
    the NVAE reconstruction, per-structure edits, latent steps, the reconstruction and samples
    (--candidates), or the morphological clean-up. Each patient is refined by an NVAE that
    never trained on it (give one --nvae per fold); otherwise refine refuses (exit 65) unless
    --allow-seen. The full rules: the docstring of acdctool.stages.refine.

    \b
    Example:
      acdctool refine seg.h5 --nvae f0/best.pt --nvae f1/best.pt -o refined.h5
    """
    config = make_config(
        RefineConfig,
        method=method.value,
        context=context.value,
        gate=gate.value,
        choose=choose.value,
        candidates=tuple(c.strip() for c in candidates.split(",") if c.strip()),
        fallback=tuple(c.strip() for c in fallback.split(",") if c.strip()),
        fallback_positions=tuple(c.strip() for c in fallback_positions.split(",") if c.strip()),
        partial=parse_numbers(partial, "--partial"),
        latent_steps=parse_numbers(latent_steps, "--latent-steps"),
        smooth=parse_numbers(smooth, "--smooth"),
        empty_confidence=empty_confidence,
        repair_agreement=repair_agreement,
        samples=samples,
        temperature=temperature,
        min_agreement=min_agreement,
        min_structure_dice=min_structure_dice,
        polish=polish,
        allow_seen=allow_seen,
        batch_size=batch_size,
        device=device.value,
        seed=seed,
    )

    # Imported after the options are checked: a bad option fails before torch loads.
    from acdctool.stages import refine as stage

    inputs = stage.Inputs(seg, tuple(nvae), provenance=provenance(seg, *nvae))
    with reporter("refine", quiet) as progress:
        result = call(stage.run, config, inputs, output, force=force, progress=progress)
    counts = ", ".join(f"{v} {k}" for k, v in result.counts.items() if v)
    log(
        f"wrote {result.rows} rows to {output} ({counts}); invalid slices {result.invalid_before} → "
        f"{result.invalid_after}",
        quiet,
    )
    if result.families:
        log("replaced by candidate family: " + ", ".join(f"{k} {v}" for k, v in result.families.items()), quiet)
    if len(result.models) > 1:
        log("rows per NVAE: " + ", ".join(f"{k} {v}" for k, v in sorted(result.models.items())), quiet)
    if result.seen:
        log(
            f"[yellow]warning:[/] {result.seen} rows refined by an NVAE that trained on (or may have seen) "
            "their patient (--allow-seen; column refine_nvae_seen)",
            quiet=False,
        )
    print_path(output)
