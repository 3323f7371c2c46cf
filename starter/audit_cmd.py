"""``dualwrite audit SPEC PATH...``: find writes to migrated tables that bypass the dual-write adapter.

Static: reads the Python source under PATH, never runs it, and needs no store URL and no database. Every
finding is a line ``path:line: table - why``; the last line counts them (``3 findings, 1 suppressed, 42
files``). Exit codes follow the project: 0 none found, 1 at least one finding, 2 bad input (a missing
path, a spec that does not load). A file that is not valid Python is a warning and is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from starter.command import EXIT_BAD_INPUT, EXIT_FAILED

commands = typer.Typer()


_HELP = """Find every write to a migrated table that does not go through the dual-write adapter.

Reports raw SQL (text(), cursor.execute(), exec_driver_sql(), f-strings) that inserts, updates, deletes,
upserts, merges, replaces or truncates a migrated table; SQLAlchemy Core insert/update/delete on a migrated
Table; and ORM models of migrated tables written through a session without the dualwrite hook (no install()
of its sessionmaker in the scanned tree). Reads are never findings. A comment '# dualwrite: ignore' on the
line accepts a finding; the summary counts those. Needs no database. Exits 1 when anything is found, 0 when
nothing is, 2 on bad input."""


def _paragraphs(text: str) -> str:
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))


@commands.command(help=_paragraphs(_HELP))
def audit(
    spec: Annotated[Path, typer.Argument(help="the migration spec (YAML): its tables' source names are audited",
                                         metavar="SPEC", show_default=False)],
    paths: Annotated[list[Path], typer.Argument(help="Python files or directories (searched recursively, "
                                                     "virtual environments and build output skipped)",
                                                metavar="PATH...", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="print the findings as a JSON list of objects")] = False,
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", "-x", help="skip files and directories whose name or path below PATH matches this "
        "pattern (fnmatch; repeatable): tests, 'migrations/*', 'seed_*.py'")] = None,
    show_suppressed: Annotated[bool, typer.Option(
        "--show-suppressed", help="also list the findings a '# dualwrite: ignore' comment accepts")] = False,
) -> None:
    """The command; its help is :data:`_HELP`."""
    from dualwrite.audit import audit_paths, spec_tables  # noqa: PLC0415 - keep `dualwrite --help` fast
    from dualwrite.errors import ConfigError  # noqa: PLC0415

    missing = [p for p in paths if not p.exists()]
    if missing:
        for p in missing:
            typer.echo(f"{p}: no such file or directory", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    try:
        tables = spec_tables(spec)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None

    report = audit_paths(tables, paths, exclude or ())
    for w in report.warnings:
        typer.echo(w, err=True)
    if as_json:
        typer.echo(report.to_json())
        typer.echo(report.summary(), err=True)
    else:
        for f in report.findings:
            if not f.suppressed:
                typer.echo(str(f))
            elif show_suppressed:
                typer.echo(f"{f} (suppressed)")
        typer.echo(report.summary())
    if report.active:
        raise typer.Exit(EXIT_FAILED)
