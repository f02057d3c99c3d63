"""What every command shares: error → exit code mapping, stderr console, progress, provenance, outputs.

A command module parses its options, builds the stage's config and inputs, makes one call to
the stage's ``run`` through :func:`call` (typed errors → one line and an exit code) and
reports on stderr, printing its output path on stdout (:func:`print_path`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from typer.core import TyperCommand

from acdctool.errors import EX_INTERRUPTED, EX_SOFTWARE, EX_USAGE, AcdcToolError

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


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a library function, turning its typed errors into a one-line message + exit code.

    Unexpected exceptions exit 1 with their one-line summary; ``ACDCTOOL_DEBUG=1`` re-raises
    them for a full traceback.
    """
    try:
        return fn(*args, **kwargs)
    except AcdcToolError as exc:
        fail(_escape(str(exc)), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", EX_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if os.environ.get("ACDCTOOL_DEBUG"):
            raise
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
    return call(cls, **kwargs)


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

    Exits 130 when the run was interrupted (``last.pt`` saved: rerun with ``--resume``);
    otherwise prints the run folder on stdout (rank 0 only under ``torchrun``).
    """
    for note in result.notes:
        log(f"[yellow]note:[/] {note}", quiet)
    if result.status == "interrupted":
        log(
            f"stopped at epoch {result.epoch + 1}, step {result.step}; saved {output / 'last.pt'}; "
            "rerun the same command with --resume to continue",
            quiet=not main,
        )
        raise typer.Exit(EX_INTERRUPTED)
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
