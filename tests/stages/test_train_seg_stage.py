"""The ``train-seg`` stage: progress counts steps inside each epoch and ends each with its record."""

from __future__ import annotations

from acdctool.config import TrainSegConfig
from acdctool.io.checkpoint import load_checkpoint
from acdctool.progress import ProgressEvent
from acdctool.stages import train_seg


def test_progress_steps_per_epoch_and_provenance(prepped, tmp_path, one_thread):
    config = TrainSegConfig(net_args=("channels=4,8,16",), fold=0, epochs=2, batch_size=8, device="cpu", augment=False)
    events: list[ProgressEvent] = []
    given = {"command": "acdctool train-seg slices.h5 -o run", "inputs": [str(prepped)]}
    result = train_seg.run(
        config, train_seg.Inputs(prepped, provenance=given), tmp_path / "run", progress=events.append
    )
    assert result.status == "completed"
    for epoch in (1, 2):
        phase = [e for e in events if e.phase == f"epoch {epoch}/2"]
        steps, end = phase[:-1], phase[-1]
        n = steps[0].total
        assert n and [e.done for e in steps] == list(range(1, n + 1)) and {e.unit for e in phase} == {"steps"}
        assert end.metrics is not None and end.metrics["epoch"] == epoch and "val_dice_mean" in end.metrics
        assert (end.done, end.total) == (n, n)
    assert load_checkpoint(tmp_path / "run" / "last.pt").provenance == given
