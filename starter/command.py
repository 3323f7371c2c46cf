"""What every command module shares: exit codes, the two consoles, the ``command`` decorator, and the one way
a command fails (:class:`CommandError` or :func:`fail`: one sentence and an exit code, never a traceback).

Each command module (``*_cmd.py``) declares its commands on its own ``commands`` group; :mod:`starter.cli`
adds the groups to the ``dualwrite`` app. Nothing here loads Temporal or the workflow package: every
command module is imported to print ``dualwrite --help``, which must stay fast.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from dualwrite.errors import DualwriteError

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "CommandError", "command", "err",
           "fail", "out", "unwrap"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
"""Ctrl-C where it is not the normal way out (the shell's 128 + SIGINT)."""

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class CommandError(DualwriteError):
    """A failure to report as one sentence with an exit code, never as a traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``message`` as an error (plainly for an interruption) and exit with ``code``."""
    err.print(f"[bold red]error:[/] {escape(message)}" if code != EXIT_INTERRUPTED else escape(message))
    raise typer.Exit(code)


def unwrap(doc: str | None) -> str:
    """A docstring as help text: typer keeps single line breaks, so join each paragraph's lines and let
    the terminal width decide where lines break."""
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def command(group: typer.Typer, name: str | None = None,
            **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``group.command`` with the docstring (unwrapped) as help text."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        kwargs.setdefault("help", unwrap(fn.__doc__))
        return group.command(name, **kwargs)(fn)

    return register
