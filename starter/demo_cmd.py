"""``dualwrite demo``: the smallest real migration, offline, on SQLite files.

It creates an old store with a legacy ``customers`` table and a new store with a changed schema (a
renamed column, a dropped one, a new column with a default), then copies and verifies with the same core
the workflows use, and prints a report. The full demo, driven by Temporal through every phase while a
live application writes, builds on this.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from starter.cli import EXIT_FAILED, app

_LEGACY = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    fax TEXT,
    created_at TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
)"""

_MODERN = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    full_name TEXT NOT NULL,
    email TEXT NOT NULL,
    tier TEXT NOT NULL DEFAULT 'standard',
    created_at TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
)"""

_SPEC = """
name: demo
old: legacy
new: modern
tables:
  - source: customers
    version_column: version
    batch_size: 500
    columns:
      full_name: name
      tier: {default: standard}
    drop: [fax]
"""


def _seed(path: Path, rows: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(_LEGACY)
        conn.executemany(
            "INSERT INTO customers (id, name, email, fax, created_at) VALUES (?, ?, ?, ?, ?)",
            [(i, f"Customer {i} ✓", f"c{i}@example.com", None, f"2024-01-{1 + i % 28:02d}T10:00:00")
             for i in range(rows)],
        )


@app.command()
def demo(
    rows: Annotated[int, typer.Option(help="rows in the legacy table")] = 5000,
    workdir: Annotated[Path | None, typer.Option(help="where to put the SQLite files (default: a temp dir)")] = None,
) -> None:
    """Run the smallest real migration on SQLite files and print a report."""
    from dualwrite.config import StoreRef
    from dualwrite.copy import copy_range
    from dualwrite.errors import DualwriteError
    from dualwrite.mapping import compile_table
    from dualwrite.spec import parse_spec
    from dualwrite.store import Store
    from dualwrite.verify import verify_range

    base = workdir or Path(tempfile.mkdtemp(prefix="dualwrite-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    old_db, new_db = base / "legacy.db", base / "modern.db"
    for p in (old_db, new_db):
        p.unlink(missing_ok=True)
    _seed(old_db, rows)
    with sqlite3.connect(new_db) as conn:
        conn.execute(_MODERN)
    spec = parse_spec(_SPEC, "demo.yaml")
    old = Store(StoreRef("legacy", f"sqlite:///{old_db}"))
    new = Store(StoreRef("modern", f"sqlite:///{new_db}"))
    table = spec.tables[0]
    mapping, problems = compile_table(table, old.describe(table.source), new.describe(table.target_table))
    if mapping is None:
        for problem in problems:
            typer.echo(f"problem: {problem}", err=True)
        raise typer.Exit(EXIT_FAILED)
    try:
        started = time.monotonic()
        progress = copy_range(old, new, mapping, on_batch=lambda p: typer.echo(
            f"  backfill: {p.rows} rows copied ({p.batches} batches)"))
        report = verify_range(old, new, mapping)
        elapsed = time.monotonic() - started
    except DualwriteError as exc:
        typer.echo(f"demo failed: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    typer.echo("")
    typer.echo(f"dualwrite demo report ({base})")
    typer.echo(f"  rows copied:        {progress.rows}")
    typer.echo(f"  rows verified:      {report.rows_source} old / {report.rows_target} new")
    typer.echo(f"  differences:        {report.missing} missing, {report.extra} extra, "
               f"{report.field_different} field-different")
    typer.echo(f"  verification:       {'clean' if report.ok else 'MISMATCH'}")
    typer.echo(f"  elapsed:            {elapsed:.2f} s")
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)
