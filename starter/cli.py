"""Entry point of the ``dualwrite`` command.

Exit codes: 0 ok, 1 refused or failed, 2 bad input (spec, configuration, arguments). Each command group
lives in its own module and registers itself on :data:`app`.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="dualwrite",
    help="Move a live application from an old database to a new one with dual writes, "
    "driven by durable Temporal workflows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def _register() -> None:
    # imported for their side effect of adding commands to ``app``
    from starter import audit_cmd, check_cmd, codec_cmd, demo_cmd, dev_cmd, ops_cmd  # noqa: F401


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    main()
