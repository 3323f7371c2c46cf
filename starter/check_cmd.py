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
from typing import TYPE_CHECKING, Annotated, Any

import typer

from starter.command import EXIT_BAD_INPUT, EXIT_FAILED

if TYPE_CHECKING:
    from dualwrite.config import StoreResolver
    from dualwrite.errors import Problem
    from dualwrite.preflight import PreflightReport
    from dualwrite.spec import SpecDocument


commands = typer.Typer()


@commands.command()
def check(
    spec: Annotated[Path, typer.Argument(help="the migration spec (YAML)", metavar="SPEC", show_default=False)],
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="file with 'stores: {name: url}' (default: $DUALWRITE_CONFIG, else ./dualwrite.yaml)",
    )] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    address: Annotated[str, typer.Option(
        "--address", envvar="DUALWRITE_TEMPORAL_ADDRESS", show_envvar=True,
        help="Temporal frontend, asked which running migrations own which tables")] = "localhost:7233",
    namespace: Annotated[str, typer.Option(
        "--namespace", envvar="DUALWRITE_NAMESPACE", show_envvar=True, help="Temporal namespace")] = "default",
) -> None:
    """Validate SPEC and preflight its stores: tables, columns, keys, types, transforms, privileges.

    Reads catalogs only and never writes. Exits 2 listing every problem, or 0 with a summary per table.
    """
    from dualwrite.config import StoreResolver, redact  # noqa: PLC0415 - keep `dualwrite --help` fast
    from dualwrite.preflight import preflight  # noqa: PLC0415
    from dualwrite.spec import read_spec  # noqa: PLC0415

    # transforms are named 'package.module:function'; like `python -m`, look in the working directory too
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        resolver = StoreResolver(config_file=config)
        doc = read_spec(spec)
        report = preflight(doc, resolver)
        if doc.spec is not None:
            report.problems += _owner_problems(doc, resolver, address, namespace)
    except Exception as exc:  # noqa: BLE001 - a bug in the check must still not print a secret
        typer.echo(f"dualwrite check could not run: {type(exc).__name__}: {redact(str(exc))}", err=True)
        raise typer.Exit(EXIT_FAILED) from None

    _warn_clear_keys(report)
    notes, evidence = _gate_notes(spec, report)
    notes += report.notes
    if as_json:
        found = report.to_dict()
        if not report.problems:
            found["gate_evidence"] = {"strategy": evidence[0][0], **dict(evidence[1:])} if evidence else {}
            found["notes"] = notes
        typer.echo(json.dumps(found, indent=2, default=str))
    elif report.problems or report.authority:
        _print_problems(report)
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
        if evidence:
            typer.echo(f"  gate evidence with strategy {evidence[0][0]}:")
            for metric, source in evidence[1:]:
                typer.echo(f"    {metric}: {source}")
        for note in notes:
            typer.secho(f"  note: {note}", fg="yellow")
        typer.echo("Nothing was written.")
    if report.problems or report.authority:
        raise typer.Exit(EXIT_BAD_INPUT)


def _print_problems(report: PreflightReport) -> None:
    """Every problem, then the reasons the new store may not become authoritative (also problems: the
    migration would be refused at CUTOVER_WRITES), then the notes."""
    listed = [*report.problems, *report.authority]
    n = len(listed)
    typer.secho(f"{report.source}: {n} problem{'s' if n != 1 else ''}", fg="red", bold=True)
    for p in listed:
        typer.echo(f"  {p}")
    for note in report.notes:
        typer.echo(f"  note: {note}")
    if report.authority:
        typer.echo("  (the new store would be refused as authoritative at CUTOVER_WRITES; `dualwrite advance "
                   "--force --reason ...` there overrides it, recorded in the transition history)")
    typer.echo("Nothing was written. Fix these and run 'dualwrite check' again.")


def _gate_notes(path: Path, report: Any) -> tuple[list[str], list[tuple[str, str]]]:
    """What the cutover gates will read with this spec's strategy (first pair: the strategy itself), and a
    note for each table that is empty and not allowed to be: its verifications would fail, and the gates
    with them, until it holds rows or the spec says ``allow_empty: true``."""
    from dualwrite.gates import evidence_sources  # noqa: PLC0415
    from dualwrite.spec import load_spec  # noqa: PLC0415

    if report.problems:
        return [], []
    try:
        spec = load_spec(path)
    except Exception:  # noqa: BLE001 - the preflight already reported on the spec
        return [], []
    notes = [f"{t.source} is empty: a verification that compares zero rows fails (a verifier must prove it "
             f"looked), and the gates with it; if it is meant to be empty, set 'allow_empty: true' on it"
             for t in report.tables if t.rows == 0 and t.rows_kind == "exact"
             and not spec.table(t.source).allow_empty]
    return notes, [(spec.strategy.value, ""), *evidence_sources(spec.strategy.value)]


def _owner_problems(doc: SpecDocument, resolver: StoreResolver, address: str, namespace: str) -> list[Problem]:
    """The single-owner rule: tables of this spec that a running migration already owns.

    Without a reachable Temporal the rule cannot be checked here; a note says so (``start`` and PREPARE
    check it again), and the rest of the report stands."""
    import asyncio  # noqa: PLC0415
    import gc  # noqa: PLC0415

    from dualwrite.owners import conflicts  # noqa: PLC0415
    from starter.client import connect, live_migrations  # noqa: PLC0415

    spec = doc.spec
    assert spec is not None

    async def lookup() -> list[Problem]:
        client = await asyncio.wait_for(connect(address, namespace), timeout=10)
        live = [m for m in await live_migrations(client) if m.name != spec.name]
        return conflicts(spec, live, resolver, where=doc.where)

    try:
        found = asyncio.run(lookup())
    except Exception as exc:  # noqa: BLE001 - the rule is checked again by start and PREPARE
        typer.echo(f"note: running migrations not looked up (Temporal at {address}: {type(exc).__name__}); "
                   "`dualwrite start` and PREPARE check that no running migration owns these tables", err=True)
        found = []
    gc.collect()  # collect the client while the interpreter is whole (temporalio/sdk-python#300)
    return found


def _warn_clear_keys(report: PreflightReport) -> None:
    """Without a payload key, the bounds of backfill ranges (key values) reach Temporal history in clear:
    harmless for integers, personal data for e-mail addresses. Say so for the tables it concerns."""
    from dualwrite.codec import CLEAR_WARNING, payloads_in_clear  # noqa: PLC0415
    from dualwrite.store import Kind  # noqa: PLC0415

    if not payloads_in_clear():
        return
    tables = [t.source for t in report.tables if any(k is not Kind.INT for k in t.mapping.key_kinds)]
    if tables:
        typer.echo(f"warning: {', '.join(tables)}: keys are not integers. {CLEAR_WARNING}", err=True)
