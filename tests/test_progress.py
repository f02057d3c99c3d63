"""The one progress convention: events, the tracker, and the CLI's reporter."""

from __future__ import annotations

from acdctool.progress import ProgressEvent, Tracker, report


def test_tracker_reports_start_and_each_advance():
    events: list[ProgressEvent] = []
    tracker = Tracker(events.append, total=4, unit="rows", phase="p")
    tracker.advance(3)
    tracker.advance()
    assert [(e.done, e.total, e.unit, e.phase) for e in events] == [
        (0, 4, "rows", "p"),
        (3, 4, "rows", "p"),
        (4, 4, "rows", "p"),
    ]
    assert all(e.metrics is None for e in events)


def test_no_callback_is_a_no_op():
    Tracker(None, total=None).advance(5)
    report(None, ProgressEvent(1))


def test_reporter_on_a_terminal_draws_phases_and_logs_metrics(monkeypatch):
    """What a TTY sees during training: a bar per epoch phase; the epoch's record goes to on_metrics."""
    from acdctool.cli import common

    monkeypatch.setattr(common, "show_progress", lambda quiet: True)
    seen = []
    with common.err_console.capture() as captured, common.reporter("train-seg", False, seen.append) as progress:
        for epoch in (1, 2):
            for step in (1, 2, 3):
                progress(ProgressEvent(step, 3, "steps", f"epoch {epoch}/2"))
            progress(ProgressEvent(3, 3, "steps", f"epoch {epoch}/2", metrics={"epoch": epoch}))
    assert seen == [{"epoch": 1}, {"epoch": 2}]
    assert "train-seg epoch 2/2" in captured.get()


def test_reporter_off_a_terminal_only_logs_metrics(monkeypatch):
    from acdctool.cli import common

    monkeypatch.setattr(common, "show_progress", lambda quiet: False)
    seen = []
    with common.reporter("x", False, seen.append) as progress:
        progress(ProgressEvent(1, 2))
        progress(ProgressEvent(2, 2, metrics={"epoch": 1}))
    with common.reporter("x", True, seen.append) as progress:  # --quiet: nothing at all
        progress(ProgressEvent(2, 2, metrics={"epoch": 2}))
    assert seen == [{"epoch": 1}]
