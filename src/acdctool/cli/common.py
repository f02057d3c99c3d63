"""What every command shares: error → exit code mapping, stderr console, progress, provenance, outputs.

A command module parses its options, builds the stage's config and inputs, makes one call to
the stage's ``run`` through :func:`call` (typed errors → one line and an exit code) and
reports on stderr, printing its output path on stdout (:func:`print_path`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from typer.core import TyperCommand

from acdctool.errors import EX_CANTCREAT, EX_INTERRUPTED, EX_SOFTWARE, EX_USAGE, AcdcToolError, Interrupted

if TYPE_CHECKING:
    from acdctool.progress import Progress, ProgressEvent

T = TypeVar("T")

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)

QUIET = typer.Option(False, "--quiet", "-q", help="No progress or log lines on stderr (errors still show).")
FORCE = typer.Option(False, "--force", "-f", help="Overwrite an existing output.")
RESUME = typer.Option(False, "--resume", help="Continue RUN_DIR/last.pt exactly where it stopped (start if absent).")
TENSORBOARD = typer.Option(
    False, "--tensorboard", help="Also log to RUN_DIR/tb (optional extra: acdctool[tensorboard])."
)


class Command(TyperCommand):
    """A command whose help lists arguments by name (``SLICES``), without a Python type (``<path>``)."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        args, opts = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                args.append((param.metavar or (param.name or "").upper(), record[1]))
            elif param.param_type_name == "option":
                opts.append(record)
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)


def fail(message: str, code: int) -> None:
    """Print ``acdctool: error: message`` on stderr and exit with ``code``."""
    err_console.print(f"[bold red]acdctool: error:[/] {message}", soft_wrap=True, markup=True, highlight=False)
    raise typer.Exit(code)


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
"""The signals every command stops cleanly on (see :mod:`acdctool.errors` for exit codes)."""


class SignalState:
    """The CLI's signal handling (:func:`install_signal_handlers`): what arrived, what was reported.

    A signal can land while Python runs a finaliser (a ``__del__``, a weakref callback of the
    garbage collector), which would print an exception there and swallow it, and the command
    would go on. Such a signal is deferred: an alarm 20 ms later raises it in ordinary code.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self.raised = False  # an Interrupted has been raised
        self.reported = False  # and its one line printed
        self.muted = False  # the work is done: late signals are only noted
        self.pending: int | None = None  # deferred out of a finaliser

    def handler(self, signum: int, frame: Any) -> None:
        if self.muted:
            self.received.append(signum)
            return
        if self.raised:
            os.write(2, f"acdctool: {signal.Signals(signum).name} again: exiting now\n".encode())
            os._exit(128 + signum)
        self.received.append(signum)
        self._raise(self.pending or signum, frame)

    def alarm(self, signum: int, frame: Any) -> None:
        if self.pending is not None and not self.muted and not self.raised:
            self._raise(self.pending, frame)

    def _raise(self, signum: int, frame: Any) -> None:
        if _in_finaliser(frame):
            self.pending = signum
            signal.setitimer(signal.ITIMER_REAL, 0.02)
            return
        self.pending, self.raised = None, True
        raise Interrupted(signum)

    def unreported(self) -> int | None:
        """The first signal that no error line has reported yet (e.g. one a finaliser swallowed)."""
        return None if self.reported or self.muted or not self.received else self.received[0]

    def finish(self) -> None:
        """The command is done: ignore further signals, even while Python shuts down (whose
        clean-up would otherwise restore the default handlers, and die of a late signal)."""
        self.muted = True
        for name in (*STOP_SIGNALS, "SIGALRM"):
            sig = getattr(signal, name, None)
            if sig is not None:
                signal.signal(sig, signal.SIG_IGN)


def _in_finaliser(frame: Any) -> bool:
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or (code.co_name in ("remove", "_remove") and "weakref" in code.co_filename):
            return True
        frame = frame.f_back
    return False


SIGNAL_STATE = SignalState()


def install_signal_handlers() -> SignalState:
    """Make SIGINT, SIGTERM and SIGHUP raise :class:`~acdctool.errors.Interrupted` in the main thread.

    The exception unwinds the stage like Ctrl-C does, so every ``finally`` runs: temp files
    and folders are removed and worker pools ended; :func:`call` then prints one line and
    exits 128 + the signal number. A second signal during that clean-up exits at once (what
    is left behind has recognisable temp names, removed by the next run). Once the stage has
    returned (its outputs are in place), a late signal is only noted: the command reports
    and exits 0.
    """
    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, SIGNAL_STATE.handler)
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, SIGNAL_STATE.alarm)
    return SIGNAL_STATE


def interrupted_message(signum: int | None) -> str:
    """``interrupted (SIGTERM)``, the one line a stopped command prints."""
    return "interrupted" if signum is None else f"interrupted ({signal.Signals(signum).name})"


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a stage's ``run``, turning its typed errors into a one-line message + exit code.

    A signal (:class:`~acdctool.errors.Interrupted`) or Ctrl-C exits 128 + its number; a full
    disk exits 73. Unexpected exceptions exit 1 with their one-line summary;
    ``ACDCTOOL_DEBUG=1`` re-raises them for a full traceback. Once ``fn`` has returned, its
    outputs are in place: a later signal no longer stops the command.
    """
    return _guarded(fn, args, kwargs, finishes=True)


def _guarded(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], finishes: bool) -> T:
    from acdctool.io.atomic import disk_full

    try:
        result = fn(*args, **kwargs)
        if finishes:
            SIGNAL_STATE.muted = True
        return result
    except AcdcToolError as exc:
        fail(_escape(str(exc)), exc.exit_code)
    except Interrupted as exc:
        SIGNAL_STATE.reported = True
        fail(interrupted_message(exc.signum), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", EX_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if os.environ.get("ACDCTOOL_DEBUG"):
            raise
        if disk_full(exc):
            fail(_escape(f"no space left on device ({type(exc).__name__}); free some space and rerun"), EX_CANTCREAT)
        fail(_escape(f"unexpected {type(exc).__name__}: {exc} (set ACDCTOOL_DEBUG=1 for a traceback)"), EX_SOFTWARE)
    raise AssertionError("unreachable")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text).replace("\n", " ")


def parse_numbers(text: str, option: str, kind: type = float) -> tuple[Any, ...]:
    """``"8,10,11"`` → ``(8.0, 10.0, 11.0)`` for comma-separated options; ``""`` or ``none`` → ``()``.

    A malformed list is a usage error (exit 2) naming the option.
    """
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        fail(_escape(f"{option} takes comma-separated {kind.__name__}s, got {text!r}"), EX_USAGE)
    raise AssertionError("unreachable")


def make_config(cls: type[T], **kwargs: Any) -> T:
    """Build a stage config; an inconsistent one is a usage error (exit 2)."""
    return _guarded(cls, (), kwargs, finishes=False)


def log(message: str, quiet: bool = False) -> None:
    """A log line on stderr (suppressed by ``--quiet``)."""
    if not quiet:
        err_console.print(message, soft_wrap=True)


def show_progress(quiet: bool) -> bool:
    """Progress bars only for a human watching: not with ``--quiet``, not when stderr is piped."""
    return not quiet and sys.stderr.isatty()


def provenance(*inputs: Path | None) -> dict[str, Any]:
    """The provenance record of this invocation: the inputs given and the command line.

    The one place ``sys.argv`` is read; stages receive the record in their ``Inputs``.
    """
    from acdctool.provenance import make_provenance

    return make_provenance([p for p in inputs if p is not None], command=sys.argv)


@contextlib.contextmanager
def reporter(
    description: str, quiet: bool, on_metrics: Callable[[Mapping[str, Any]], None] | None = None
) -> Iterator[Progress]:
    """Yield the :data:`acdctool.progress.Progress` callback a stage reports to.

    On a terminal (:func:`show_progress`) it drives a rich progress bar on stderr: units done of
    the total, rate (it/s), elapsed time and ETA, restarted for each phase (each training epoch).
    ``on_metrics`` gets the results that end a phase (a training epoch's record) unless
    ``quiet``; its log lines print above the bar, or alone when stderr is not a terminal.
    """

    def metrics(event: ProgressEvent) -> None:
        if event.message is not None:
            log(f"[yellow]note:[/] {_escape(event.message)}", quiet)
        if event.metrics is not None and on_metrics is not None and not quiet:
            on_metrics(event.metrics)

    if not show_progress(quiet):
        yield metrics
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:.1f} it/s")

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
        Rate(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task(description, total=None, unit="")
        phase: list[str | None] = [None]

        def callback(event: ProgressEvent) -> None:
            if event.message is not None:
                metrics(event)
                return
            if event.phase != phase[0]:
                phase[0] = event.phase
                label = f"{description} {event.phase}".strip()
                bar.reset(task, total=event.total, completed=event.done, description=label, unit=event.unit)
            else:
                bar.update(task, total=event.total, completed=event.done)
            metrics(event)

        yield callback


def print_path(path: Any) -> None:
    """Print an output path on stdout, so ``$(acdctool ...)`` composes in scripts."""
    sys.stdout.write(f"{path}\n")
    sys.stdout.flush()


def finish_training(result: Any, output: Any, main: bool, quiet: bool) -> None:
    """Report a :class:`acdctool.train.loop.TrainResult` the same way for every training command.

    Exits 128 + the signal number when a signal stopped the run (130 for a stop request;
    ``last.pt`` saved: rerun with ``--resume``); otherwise prints the run folder on stdout
    (rank 0 only under ``torchrun``).
    """
    from acdctool.errors import signal_exit_code

    for note in result.notes:
        log(f"[yellow]note:[/] {_escape(note)}", quiet)
    if result.status == "interrupted":
        log(
            f"{interrupted_message(result.signal)}: stopped at epoch {result.epoch + 1}, step {result.step}; "
            f"saved {output / 'last.pt'}; rerun the same command with --resume to continue",
            quiet=not main,
        )
        raise typer.Exit(signal_exit_code(result.signal))
    if result.status == "up-to-date":
        log(f"{output}: already trained for {result.epoch} epochs (raise --epochs to continue)", quiet)
    elif result.best_epoch is not None:
        log(
            f"done: {result.epoch} epochs; best val Dice {result.best_value:.4f} at epoch {result.best_epoch} "
            f"({output / 'best.pt'})",
            quiet,
        )
    if main:
        print_path(output)
