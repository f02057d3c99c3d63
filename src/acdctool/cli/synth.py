"""``acdctool synth``: write synthetic ACDC-format phantoms."""

from __future__ import annotations

from pathlib import Path

import typer

from acdctool.cli.common import FORCE, QUIET, log, make_config, print_path, progress, run
from acdctool.config import SynthConfig

_D = SynthConfig()


def synth(
    out_dir: Path = typer.Argument(..., help="Folder to create (gets training/ and testing/)."),
    patients: int = typer.Option(_D.patients, "--patients", "-n", help="Patients under training/."),
    test_patients: int = typer.Option(_D.test_patients, "--test-patients", help="Patients under testing/."),
    seed: int = typer.Option(_D.seed, "--seed", help="Random seed (same seed, same files)."),
    frames: int = typer.Option(_D.frames, "--frames", help="Cine frames per cycle (NbFrame)."),
    write_4d: bool = typer.Option(_D.write_4d, "--4d/--no-4d", help="Also write patientNNN_4d.nii.gz."),
    force: bool = FORCE,
    quiet: bool = QUIET,
) -> None:
    """Write synthetic ACDC-format cine-MRI phantoms.

    Patients in the exact ACDC layout (Info.cfg, ED/ES frames and masks, ACDC-style headers),
    shaped by pathology group (NOR, MINF, DCM, HCM, RV); deterministic for a seed.

    Example: acdctool synth demo/ACDC --patients 20 --seed 1
    """
    from acdctool.data.synth import write_phantoms

    config = make_config(
        SynthConfig, patients=patients, test_patients=test_patients, seed=seed, frames=frames, write_4d=write_4d
    )
    with progress("synth", config.patients + config.test_patients, quiet) as advance:
        written = run(write_phantoms, config, out_dir, force=force, on_patient=advance)
    log(f"wrote {len(written)} phantom patients to {out_dir}", quiet)
    print_path(out_dir)
