"""The CLI's one rule for user mistakes: a K2Error becomes ``error: ...`` lines on stderr and its exit code.

Shared by every typer app of k2trt (the main CLI, ``k2trt kernels``, ``k2trt bench``); anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import functools

import typer

from k2trt.errors import K2Error


def user_errors(fn):
    """Wrap a typer command so that its K2Error is reported without a traceback."""

    @functools.wraps(fn)  # typer reads the signature through __wrapped__
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except K2Error as err:
            for line in err.problems:
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(err.exit_code) from None

    return run
