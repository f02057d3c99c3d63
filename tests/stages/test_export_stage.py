"""The ``export`` and ``info`` stages through their ``run``: volumes written, progress, the summary."""

from __future__ import annotations

import pytest

from acdctool.config import ExportConfig, InfoConfig
from acdctool.errors import BadInputError, ConfigError
from acdctool.stages import export, info


def test_export_one_event_per_volume(prepped, synth_root, tmp_path):
    events = []
    result = export.run(
        ExportConfig(array="gt"),
        export.Inputs(prepped, synth_root / "training"),
        tmp_path / "n",
        progress=events.append,
    )
    assert len(result.files) == 10 and all(f.is_file() and f.name.endswith("_gt.nii.gz") for f in result.files)
    assert [e.done for e in events] == list(range(11)) and {(e.total, e.unit) for e in events} == {(10, "volumes")}


def test_export_config_and_missing_array(prepped, synth_root, tmp_path):
    with pytest.raises(ConfigError, match="--array"):
        ExportConfig(array="probs")
    with pytest.raises(BadInputError):
        export.run(ExportConfig(array="pred"), export.Inputs(prepped, synth_root / "training"), tmp_path / "n")
    assert not (tmp_path / "n").exists()


def test_info_summary(prepped):
    summary = info.run(InfoConfig(), info.Inputs(prepped), None).summary
    assert summary["kind"] == "prep" and summary["patients"] == 5
