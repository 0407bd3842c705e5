"""The ``mamlkit`` command: parses, builds the config, calls the library — nothing else.

A user mistake prints one line on stderr and exits with code 2 (no traceback). This module
is the entry point (:func:`main`, :func:`console`: errors to exit codes, warnings to one
line); the commands live in the modules beside it, one per command or group (``train``,
``evaluate``, ``adapt``, ``listing``, ``plot``, ``reproduce``, ``data``), wired together by
``parser``, and what they share in ``common``."""

from __future__ import annotations

import os
import sys
import warnings

import click

from mamlkit.cli.parser import app
from mamlkit.errors import (
    DivergenceError,
    Interrupted,
    LostRank,
    UserError,
    is_write_failure,
)

__all__ = ["app", "console", "main", "says_user_errors"]


_WARNED: set[str] = set()  # what this command has said already


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as the CLI shows it: one line, without the source line Python adds, and
    each once per command (building train, val and test tasks may warn alike)."""
    text = " ".join(str(message).split())
    if text not in _WARNED:
        _WARNED.add(text)
        click.echo(f"mamlkit: warning: {text}", err=True)


def says_user_errors() -> bool:
    """Whether this process prints a user error. Under ``torchrun`` the processes of one
    node read the same command line, files and data and so refuse alike: only the node's
    first process (``LOCAL_RANK`` 0) says it, once per machine instead of once per process.
    (A lost rank, exit 1, is each process's own news: every process says it.)"""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return world <= 1 or int(os.environ.get("LOCAL_RANK", "0")) == 0
    except ValueError:  # not torchrun's environment: say it
        return True


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes become one line on stderr and exit code 2."""
    from mamlkit.data.errors import DataError
    from mamlkit.progress import log_to_stderr
    from mamlkit.system import tune_allocator

    tune_allocator()
    finished = False
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warning
    _WARNED.clear()
    try:
        with log_to_stderr():  # progress lines without a terminal (mamlkit.progress)
            app.main(args=argv, prog_name="mamlkit", standalone_mode=False)
        finished = True
    except (UserError, DataError) as exc:
        if says_user_errors():
            click.echo(f"mamlkit: error: {exc}", err=True)
        finished = isinstance(exc, DivergenceError)  # every rank decides it alike
        return 2
    except LostRank as exc:  # another process of a torchrun job failed: its message says why
        click.echo(f"mamlkit: error: {exc}", err=True)
        return 1
    except OSError as exc:
        if not is_write_failure(exc):
            raise
        what = exc.filename or "a file"
        click.echo(
            f"mamlkit: error: {what}: {exc.strerror}; free space or fix the permissions, "
            "then run the command again (nothing written before was lost)",
            err=True,
        )
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"mamlkit: error: {exc.format_message()}", err=True)
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        cause = exc.__cause__ if isinstance(exc, click.exceptions.Abort) else exc  # click wraps
        said = isinstance(cause, Interrupted) and str(cause)  # where the run continues from
        click.echo(f"mamlkit: {said or 'interrupted'}", err=True)
        return 130
    finally:
        warnings.showwarning = shown
        if "mamlkit.distributed" in sys.modules:  # else no process group to leave
            from mamlkit.distributed import shutdown

            # under torchrun the ranks leave together after a success or a divergence (a
            # rank that simply exits first makes gloo abort the others); a no-op for a
            # single process
            shutdown(wait=finished)
    return 0


def console() -> None:
    """Console-script entry point."""
    code = main()
    if "mamlkit.distributed" in sys.modules and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # a torchrun worker whose process group main() has already left, every file written
        from mamlkit.distributed import exit_without_teardown

        exit_without_teardown(code)
    sys.exit(code)
