"""What every command shares: error → exit code mapping, stderr console, progress, outputs."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer
from rich.console import Console

from acdctool.errors import EX_INTERRUPTED, EX_SOFTWARE, EX_USAGE, AcdcToolError

T = TypeVar("T")

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)

QUIET = typer.Option(False, "--quiet", "-q", help="No progress or log lines on stderr (errors still show).")
FORCE = typer.Option(False, "--force", "-f", help="Overwrite an existing output.")
RESUME = typer.Option(False, "--resume", help="Continue RUN_DIR/last.pt exactly where it stopped (start if absent).")
TENSORBOARD = typer.Option(False, "--tensorboard", help="Also log to RUN_DIR/tb (needs tensorboard).")


def fail(message: str, code: int) -> None:
    """Print ``acdctool: error: message`` on stderr and exit with ``code``."""
    err_console.print(f"[bold red]acdctool: error:[/] {message}", soft_wrap=True, markup=True, highlight=False)
    raise typer.Exit(code)


def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
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
    return run(cls, **kwargs)


def log(message: str, quiet: bool = False) -> None:
    """A log line on stderr (suppressed by ``--quiet``)."""
    if not quiet:
        err_console.print(message, soft_wrap=True)


def show_progress(quiet: bool) -> bool:
    """Progress bars only for a human watching: not with ``--quiet``, not when stderr is piped."""
    return not quiet and sys.stderr.isatty()


@contextlib.contextmanager
def progress(description: str, total: int | None, quiet: bool) -> Iterator[Callable[..., None]]:
    """Yield ``advance(*_, advance=1)``, driving a rich progress bar (with ETA) on stderr when shown."""
    if not show_progress(quiet):
        yield lambda *_, **__: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda *_, advance=1, **__: bar.advance(task, advance)


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
