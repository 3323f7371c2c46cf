"""The store side of key-log capture (``outbox``, ``triggers``): a key log on each store, drained by the relay.

``outbox``: the adapter appends each written key to ``dualwrite_outbox`` in the writing transaction.
``triggers``: row triggers on both stores append every writer's keys to ``dualwrite_changelog``; the same
triggers machinery refuses writes that bypass dualwrite on the store that is not authoritative.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from dualwrite import outbox, triggers
from dualwrite.capture.store_side import RETIRED_OLD, Backlog, Key, RelayStores
from dualwrite.keys import decode_key
from dualwrite.mapping import TableMapping
from dualwrite.mirror import normal_key
from dualwrite.relay import RelayResult, drain
from dualwrite.stats import Stats
from dualwrite.store import Store

__all__ = ["IN_FLIGHT_SECONDS", "MAX_PENDING_READ", "KeyLogSide", "log_point", "logs_behind", "pending_log_keys"]

log = logging.getLogger("dualwrite.capture.keylog")

MAX_PENDING_READ = 200_000
"""At most this many key-log entries are read to tell in-flight differences from real ones."""
IN_FLIGHT_SECONDS = 30.0
"""A key-log entry older than this is not "in flight" but a relay that does not keep up (or does not run):
its key's difference counts, so a stalled relay cannot make a verification pass."""


class KeyLogSide:
    """Key-log capture on both stores; ``capture_triggers``: the stores' triggers fill the log (``triggers``),
    otherwise the adapter does (``outbox``)."""

    def __init__(self, key_log: str, *, capture_triggers: bool) -> None:
        self.key_log = key_log
        self.capture_triggers = capture_triggers

    def setup(self, rs: RelayStores) -> tuple[list[str], list[str]]:
        logs: list[str] = []
        captured: list[str] = []
        for store in (rs.old, rs.new):
            outbox.ensure_log(store, self.key_log)
            logs.append(f"{store.name}/{self.key_log}")
        if self.capture_triggers:
            for t in rs.spec.tables:
                mapping = rs.mapping_for(t.source, False)
                triggers.install_triggers(rs.old, rs.spec.name, mapping.source_table, list(mapping.source_key))
                captured.append(f"{rs.old.name}/{mapping.source_table}")
                triggers.install_triggers(rs.new, rs.spec.name, mapping.target_table, list(mapping.target_key))
                captured.append(f"{rs.new.name}/{mapping.target_table}")
        return logs, captured

    def teardown(self, rs: RelayStores) -> None:
        """Remove the capture triggers (the logs stay, empty, for a possible later restart). A table retired at
        CLEANUP (renamed or dropped) took its triggers with it: its failure is not one."""
        from dualwrite.retire import table_exists  # noqa: PLC0415 - only here

        for t in rs.spec.tables if self.capture_triggers else ():
            for store, table in ((rs.old, t.source), (rs.new, t.target_table)):
                try:
                    triggers.remove_triggers(store, rs.spec.name, table)
                except Exception:
                    if table_exists(store, table):
                        raise

    def before_denial(self, rs: RelayStores) -> None:
        return None  # the triggers that deny writes are installed by the denial itself

    def drain_round(self, rs: RelayStores, phase: str, *, limit: int, max_seconds: float, stats: Stats | None,
                    should_stop: Callable[[], bool]) -> RelayResult:
        """With denied writes only the authoritative store's log is mirrored (the other holds echoes of
        dualwrite's own writes at most); once the old store is retired the new store's entries are dropped."""
        discard = ("new",) if phase in RETIRED_OLD else ()
        directions = (triggers.authoritative_side(phase),) if rs.denies_writes() else ("old", "new")
        return drain(rs.old, rs.new, rs.spec.name, rs.mapping_for, logs=(self.key_log,), directions=directions,
                     discard=discard, limit=limit, max_seconds=max_seconds, control_store=rs.control, stats=stats,
                     should_stop=should_stop)

    def backlog(self, rs: RelayStores) -> Backlog:
        out = Backlog()
        for store in (rs.old, rs.new):
            try:
                n, age = outbox.log_depth(store, rs.spec.name, log=self.key_log)
            except Exception:  # noqa: BLE001, S112 - a log that does not exist yet holds nothing
                continue
            out.remaining += n
            if age is not None and (out.lag_seconds is None or age > out.lag_seconds):
                out.lag_seconds = age
        if rs.denies_writes():
            out.refused_writes = refused_writes(rs)
        return out

    def catch_up_points(self, rs: RelayStores, sides: Sequence[str]) -> list[Any]:
        """(side, store, log, newest id) of the key log of each side's store that holds entries."""
        points: list[Any] = []
        for side in sides:
            store = rs.store(side)
            if self.key_log in store.table_names():
                point = log_point(store, rs.spec.name, self.key_log)
                if point is not None:
                    points.append((side, store, point))
        return points

    def behind(self, rs: RelayStores, points: Sequence[Any]) -> tuple[int, tuple[str, ...]]:
        total, waiting = 0, []
        for side, store, point in points:
            n = logs_behind(store, rs.spec.name, self.key_log, point)
            total += n
            if n:
                waiting.append(side)
        return total, tuple(waiting)

    def catch_up_round(self, rs: RelayStores, sides: tuple[str, ...], phase: str, *, limit: int,
                       should_stop: Callable[[], bool]) -> RelayResult:
        return drain(rs.old, rs.new, rs.spec.name, rs.mapping_for, logs=(self.key_log,), directions=sides,
                     limit=limit, max_seconds=1.0, control_store=rs.control, should_stop=should_stop)

    def pending_keys(self, store: Store, control_store: Store, migration: str, spec_table: str,
                     mapping: TableMapping) -> set[Key]:
        # the outbox names the spec's source table, a capture trigger the table it is on
        return pending_log_keys(store, migration, {spec_table, mapping.source_table}, mapping.key_kinds,
                                (self.key_log,))

    def abort(self, rs: RelayStores, exists: Callable[[Store, str], bool]) -> list[str]:
        """The capture triggers and the denied writes: after an abort both stores accept every writer."""
        removed: list[str] = []
        for t in rs.spec.tables if self.capture_triggers else ():
            for store, table in ((rs.old, t.source), (rs.new, t.target_table)):
                if exists(store, table):
                    triggers.remove_triggers(store, rs.spec.name, table)
                    triggers.allow_writes(store, rs.spec.name, [table])
                    triggers.drop_refusal_counters(store, rs.spec.name, [table])
                    removed.append(f"{store.name}/{table}")
        return removed


def refused_writes(rs: RelayStores) -> dict[str, int]:
    """'store/table' -> writes refused so far by the denied-writes triggers (engines that count them)."""
    out: dict[str, int] = {}
    for side in ("old", "new"):
        store = rs.store(side)
        for table in rs.tables(side):
            try:
                n = triggers.refused_writes(store, rs.spec.name, table)
            except Exception:  # noqa: BLE001 - a count is information, never a reason to stop the relay
                n = None
            if n:
                out[f"{store.name}/{table}"] = n
    return out


def log_point(store: Store, migration: str, log_table: str) -> int | None:
    """The id of a migration's newest entry in a key log (None when it has none)."""
    p = store.paramstyle
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT MAX(id) FROM {log_table} WHERE migration = {p}", (migration,))
        (point,) = cur.fetchone()
        cur.close()
        conn.rollback()
    return None if point is None else int(point)


def logs_behind(store: Store, migration: str, log_table: str, point: int) -> int:
    """Entries of a migration at or below ``point`` still waiting in a key log."""
    p = store.paramstyle
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT COUNT(*) FROM {log_table} WHERE migration = {p} AND id <= {p}", (migration, point))
        (n,) = cur.fetchone()
        cur.close()
        conn.rollback()
    return int(n)


def pending_log_keys(store: Store, migration: str, tables: set[str], kinds: Any, logs: tuple[str, ...]
                     ) -> set[Key]:
    """Keys logged for any of ``tables``, normalized, in the store's own key terms, with recent entries
    (younger than ``IN_FLIGHT_SECONDS``) waiting in the store's key logs."""
    present = store.table_names()
    out: set[Key] = set()
    p = store.paramstyle
    names = sorted(tables)
    for log_table in logs:
        if log_table not in present:
            continue
        with store.connect() as conn:
            cur = conn.cursor()
            cur.execute(f"SELECT key_json FROM {log_table} WHERE migration = {p} "
                        f"AND table_name IN ({', '.join([p] * len(names))}) "
                        f"AND {outbox.age_seconds_sql(store)} <= {float(IN_FLIGHT_SECONDS)} "
                        f"ORDER BY id LIMIT {MAX_PENDING_READ}", (migration, *names))
            rows = cur.fetchall()
            cur.close()
            conn.rollback()
        for (wire,) in rows:
            try:
                key = decode_key(json.loads(wire), kinds)
            except (ValueError, TypeError):
                continue  # not a key of this table's shape: it cannot match a difference
            if key is not None:
                out.add(normal_key(key))
    return out
