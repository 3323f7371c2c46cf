"""Repair-queue keys that a write fence could not mirror: which tables, how many, why, and whether they hold
*this* flip of authority.

Authority never moves while an acknowledged write exists only on the losing store: the fence tries every
queue entry and refuses the flip while one is left ([T2-5]). One key that can never be mirrored (a row the
gaining store rejects, a transform that raises) would then freeze every flip of the migration. So the
entries left after the fence's drain are summed up per table (count, attempts, the last error without key
values), and only those the flip concerns hold it:

- the whole migration flips: every entry;
- one tenant flips: entries of tables that move by tenant (``tenant_column``) whose row belongs to that
  tenant, or whose tenant cannot be told (the row is on neither store, or unreadable). Shared tables
  (without a tenant column) keep the migration's authority and do not flip with a tenant; another
  tenant's keys wait for that tenant's flip.

Only counts and the names of tables and columns leave this module; keys stay in the control store.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dualwrite import bookkeeping as bk
from dualwrite import control
from dualwrite import rows as rowio
from dualwrite.gates import RepairFacts, RepairTable
from dualwrite.keys import Key, decode_key
from dualwrite.mapping import TableMapping
from dualwrite.sqlgen import source_side, target_side
from dualwrite.store import Store

__all__ = ["StuckTable", "gate_facts", "stuck_tables"]

log = logging.getLogger("dualwrite.repair")

SCOPE_LIMIT = 1000
"""At most this many keys of a table are looked up for their tenant; beyond, the rest count as the flip's."""


@dataclass(frozen=True)
class StuckTable:
    table: str
    keys: int
    """Distinct keys of the table still queued."""
    blocking: int
    """Of those, the keys of the scope that flips (they hold the flip)."""
    attempts: int
    """The most attempts any of them has had."""
    error: str
    """The last error mirroring them (without key or row values), '' when none was seen in this drain."""


def stuck_tables(control_store: Store, migration: str, *, tenant: str | None,
                 tenant_columns: dict[str, str | None], old: Store, new: Store,
                 mapping_for: Callable[[str, bool], TableMapping], errors: Sequence[str] = ()) -> list[StuckTable]:
    """Per table, what the repair queue still holds and how much of it holds a flip of ``tenant`` (None: the
    whole migration). ``tenant_columns``: each spec table's tenant column; ``errors``: the drain's messages,
    each ``"table T: ..."``."""
    p = control_store.paramstyle
    rows = bk.query(control_store, f"SELECT table_name, key_json, attempts FROM {control.REPAIR_QUEUE} "
                                   f"WHERE migration = {p} ORDER BY table_name, id", [migration])
    keys: dict[str, dict[str, int]] = {}
    for table, key_json, attempts in rows:
        per = keys.setdefault(str(table), {})
        per[str(key_json)] = max(per.get(str(key_json), 0), int(attempts))
    out = []
    for table, per in keys.items():
        if tenant is None:
            blocking = len(per)
        elif not tenant_columns.get(table):
            blocking = 0  # a shared table: its authority does not move with a tenant
        else:
            blocking = _of_tenant(table, list(per), tenant, str(tenant_columns[table]), old, new, mapping_for)
        error = next((e.split(": ", 1)[1] for e in errors if e.startswith(f"table {table}: ")), "")
        out.append(StuckTable(table, len(per), blocking, max(per.values()), error))
    return out


def gate_facts(stuck: Sequence[StuckTable], tenant: str | None) -> RepairFacts:
    """The repair-queue facts a gate is decided on: the same per-scope count that holds the write fence, so a
    tenant's gate is not held by a key that would not hold its flip."""
    return RepairFacts(scope=f"tenant {tenant}" if tenant is not None else "the migration",
                       queued=sum(s.keys for s in stuck), of_scope=sum(s.blocking for s in stuck),
                       tables=[RepairTable(table=s.table, keys=s.keys, of_scope=s.blocking, attempts=s.attempts)
                               for s in stuck])


def _of_tenant(table: str, key_jsons: list[str], tenant: str, column: str, old: Store, new: Store,
               mapping_for: Callable[[str, bool], TableMapping]) -> int:
    """How many of the keys belong to ``tenant`` or cannot be placed (both count for its flip)."""
    try:
        mapping = mapping_for(table, False)
        decoded = [decode_key(json.loads(k), mapping.key_kinds) for k in key_jsons]
    except Exception:  # noqa: BLE001 - the table cannot be read: every key counts
        return len(key_jsons)
    wanted = [k for k in decoded[:SCOPE_LIMIT] if k is not None]
    beyond = len(key_jsons) - len(wanted)
    found: dict[Key, str] = {}
    sides = [(source_side(mapping, old), column)]
    info = mapping.target_info
    if info is not None and column in info.columns:  # the new table under the same column name
        sides.append((target_side(mapping, new), column))
    for side, col in sides:
        missing = [k for k in wanted if k not in found]
        if not missing:
            break
        try:
            adapted = [rowio.adapt_key(k, side.key_kinds, side.store.dialect) for k in missing]
            where, params = side.keys_predicate(adapted)
            got = bk.query(side.store, f"SELECT {side.key_list()}, {side.store.quote(col)} FROM {side.qtable} "
                                       f"WHERE {where}", params)
        except Exception as exc:  # noqa: BLE001 - unreadable: those keys stay unplaced (they count)
            log.info("cannot tell the tenant of %d queued key(s) of %s: %s", len(missing), table, type(exc).__name__)
            continue
        by_text = {_text(k): k for k in missing}
        for r in got:
            k = by_text.get(_text(tuple(r[:-1])))
            if k is not None:
                found[k] = str(r[-1])
    return beyond + sum(1 for k in wanted if found.get(k, tenant) == tenant)


def _text(key: Sequence[Any]) -> tuple[str, ...]:
    """A key compared across drivers (a UUID object and its text, an int and a Decimal)."""
    return tuple(str(v) for v in key)
