"""The single-owner rule: a table belongs to at most one live migration.

Two migrations of the same table fight over it: each mirrors into it, and CLEANUP of one retires (renames
or drops) the table the other still serves from, an outage. So ``dualwrite check``, ``dualwrite start``
and PREPARE refuse a migration whose tables (old store's sources, new store's targets) are already taken
by another running migration, naming it. A finished (DONE), failed, terminated or aborted migration owns
nothing: only running ``MigrationWorkflow`` executions count, as listed by Temporal's visibility store,
with the spec they were started with (read from their history, so a migration started from the Web UI
counts the same). The listing itself needs Temporal and lives with the client code
(:func:`starter.client.live_migrations`); this module only compares, and has no Temporal import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from dualwrite.config import StoreResolver
from dualwrite.errors import Problem
from dualwrite.spec import MigrationSpec


@dataclass(frozen=True)
class LiveMigration:
    """A running migration as the single-owner rule sees it: its spec, phase and start time."""

    name: str
    phase: str
    started: datetime | None
    spec: MigrationSpec


def _store_identity(name: str, resolver: StoreResolver | None) -> str:
    """Where a store really is (server and database, no credentials), so two names of one database match."""
    ref, _ = resolver.try_resolve(name) if resolver is not None else (None, [])
    if ref is None:
        return f"name:{name}"
    try:
        url = sa.make_url(ref.url)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported elsewhere; compare by name here
        return f"name:{name}"
    backend = url.get_backend_name()
    if backend == "sqlite":
        return f"sqlite:{url.database}"
    return f"{backend}://{(url.host or '').lower()}:{url.port or ''}/{url.database or ''}"


def _table_identity(table: str) -> str:
    name = table.lower()
    return name.removeprefix("public.")


Claim = tuple[tuple[int | str, ...], str, str]
"""(where in the spec, store name, table name)."""


def claims(spec: MigrationSpec, resolver: StoreResolver | None) -> dict[tuple[str, str], Claim]:
    """(store identity, table) -> where the spec names it, for every table the migration touches."""
    out: dict[tuple[str, str], Claim] = {}
    old, new = _store_identity(spec.old, resolver), _store_identity(spec.new, resolver)
    for i, t in enumerate(spec.tables):
        out.setdefault((old, _table_identity(t.source)), (("tables", i, "source"), spec.old, t.source))
        out.setdefault((new, _table_identity(t.target_table)),
                       (("tables", i, "target" if t.target else "source"), spec.new, t.target_table))
    return out


def _loc_text(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))


def conflicts(spec: MigrationSpec, live: Iterable[LiveMigration], resolver: StoreResolver | None,
              where: Callable[[tuple[int | str, ...]], str] = _loc_text) -> list[Problem]:
    """One problem per table of ``spec`` that a migration in ``live`` already owns, naming that migration.

    ``live`` must not contain ``spec``'s own migration (the caller leaves it out, see
    :func:`owners_before`). ``where`` turns a spec path into the location shown (with the file line)."""
    mine = claims(spec, resolver)
    found: list[Problem] = []
    for other in sorted(live, key=lambda m: m.name):
        theirs = claims(other.spec, resolver)
        for key, (loc, store, table) in mine.items():
            if key in theirs:
                found.append(Problem(
                    where(loc),
                    f"table {table} in store {store!r} belongs to the running migration {other.name!r} "
                    f"(phase {other.phase}): a table belongs to at most one live migration; finish or abort "
                    f"{other.name!r} first (`dualwrite status {other.name}`)"))
    return found


def owners_before(me: str, my_start: datetime | None, live: Iterable[LiveMigration]) -> list[LiveMigration]:
    """The running migrations that own their tables before ``me``: every one past PREPARE, and those in
    PREPARE that started earlier (ties by name), so of two started at once exactly the later is refused."""
    out: list[LiveMigration] = []
    for m in live:
        if m.name == me:
            continue
        if m.phase != "PREPARE" or my_start is None or m.started is None or (m.started, m.name) < (my_start, me):
            out.append(m)
    return out
