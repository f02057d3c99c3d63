"""``acdctool synth``: write synthetic ACDC-format phantoms."""

from __future__ import annotations

from pathlib import Path

import typer

from acdctool.cli.common import FORCE, QUIET, call, log, make_config, print_path, reporter
from acdctool.config import SynthConfig

_D = SynthConfig()


def synth(
    out_dir: Path = typer.Argument(..., metavar="OUT_DIR", help="Folder to create (gets training/ and testing/)."),
    patients: int = typer.Option(_D.patients, "--patients", "-n", metavar="N", help="Patients under training/."),
    test_patients: int = typer.Option(
        _D.test_patients, "--test-patients", metavar="N", help="Patients under testing/."
    ),
    seed: int = typer.Option(_D.seed, "--seed", metavar="N", help="Random seed (same seed, same files)."),
    frames: int = typer.Option(_D.frames, "--frames", metavar="N", help="Cine frames per cycle (NbFrame)."),
    write_4d: bool = typer.Option(_D.write_4d, "--4d/--no-4d", help="Also write patientNNN_4d.nii.gz."),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Write synthetic ACDC-format cine-MRI phantoms.

    Patients in the exact ACDC layout (Info.cfg, ED/ES frames and masks, ACDC-style headers),
    shaped by pathology group (NOR, MINF, DCM, HCM, RV); deterministic for a seed.

    \b
    Example:
      acdctool synth demo/ACDC --patients 20 --seed 1
    """
    config = make_config(
        SynthConfig, patients=patients, test_patients=test_patients, seed=seed, frames=frames, write_4d=write_4d
    )
    # Imported after the options are checked: a bad option fails before torch loads.
    from acdctool.stages import synth as stage

    with reporter("synth", quiet) as progress:
        result = call(stage.run, config, None, out_dir, force=force, progress=progress)
    log(f"wrote {len(result.patients)} phantom patients to {out_dir}", quiet)
    print_path(out_dir)
