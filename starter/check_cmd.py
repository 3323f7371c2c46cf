"""``dualwrite check SPEC``: validate a spec and preflight the live stores, writing nothing.

The output is for a person fixing a spec: every problem on one line, ``location: what is wrong``, with
the location a ``file:line path`` when the spec is at fault and ``store 'name' (role)`` when a store is.
Exit codes follow the project: 0 clean, 2 at least one problem (bad input), 1 when the check itself
could not run. ``--json`` prints the same report for scripts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from starter.cli import EXIT_BAD_INPUT, EXIT_FAILED, app


@app.command()
def check(
    spec: Annotated[Path, typer.Argument(help="the migration spec (YAML)", metavar="SPEC", show_default=False)],
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="file with 'stores: {name: url}' (default: $DUALWRITE_CONFIG, else ./dualwrite.yaml)",
    )] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Validate SPEC and preflight its stores: tables, columns, keys, types, transforms, privileges.

    Reads catalogs only and never writes. Exits 2 listing every problem, or 0 with a summary per table.
    """
    from dualwrite.config import StoreResolver, redact  # noqa: PLC0415 - keep `dualwrite --help` fast
    from dualwrite.preflight import preflight_file  # noqa: PLC0415

    # transforms are named 'package.module:function'; like `python -m`, look in the working directory too
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        report = preflight_file(spec, StoreResolver(config_file=config))
    except Exception as exc:  # noqa: BLE001 - a bug in the check must still not print a secret
        typer.echo(f"dualwrite check could not run: {type(exc).__name__}: {redact(str(exc))}", err=True)
        raise typer.Exit(EXIT_FAILED) from None

    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
    elif report.problems:
        n = len(report.problems)
        typer.secho(f"{report.source}: {n} problem{'s' if n != 1 else ''}", fg="red", bold=True)
        for p in report.problems:
            typer.echo(f"  {p}")
        typer.echo("Nothing was written. Fix these and run 'dualwrite check' again.")
    else:
        typer.secho(f"{report.source}: OK, {len(report.tables)} table{'s' if len(report.tables) != 1 else ''} "
                    "ready to migrate", fg="green", bold=True)
        for s in report.stores:
            who = f", as {s.user}" if s.user else ""
            typer.echo(f"  {'/'.join(s.roles)} store {s.name!r}: {s.dialect}{who}, {s.url}")
        for t in report.tables:
            version = f"version column {t.version_column}" if t.version_column else "no version column"
            typer.echo(f"  {t.source} -> {t.target}: key ({', '.join(t.source_key)}), {t.columns} columns mapped, "
                       f"{version}, {t.rows_text()}")
        typer.echo("Nothing was written.")
    if report.problems:
        raise typer.Exit(EXIT_BAD_INPUT)
