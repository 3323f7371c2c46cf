"""Control tables: how the migration workflow talks to the applications, durably and without Temporal.

The workflow is the source of truth for a migration's state; it *publishes* (phase, epoch, paused,
overrides) to ``dualwrite_state`` in the control store (the old store unless the spec names another).
Applications poll that row, cache it, and record in ``dualwrite_instances`` the epoch they have seen with
a heartbeat. A phase change is complete only when every *live* instance (heartbeat within N seconds) has
seen the new epoch: that is the phase barrier, and without it a slow instance could still write in the old
order while the backfill or a cutover already relies on the new one.

Keys whose secondary write failed go to ``dualwrite_repair_queue`` (durable, never through Temporal
history); the repair drain mirrors them later. ``dualwrite_checkpoints`` holds the committed cursor of each
backfill range, written right after each batch commits, so a worker killed at any instant redoes at most
the one batch in flight (heartbeat details alone are throttled and may lag several batches).
``dualwrite_specs`` holds each migration's spec once, keyed by its digest, so activity inputs carry a
reference to it instead of the whole spec (workers load it on first use and cache it by digest).

Every timestamp is the database's own clock (UTC), so instances on machines with skewed clocks still agree
on who is live. The schema is created idempotently on PostgreSQL, MySQL/MariaDB and SQLite. No Temporal
imports here: applications use this module.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dualwrite import bookkeeping as bk
from dualwrite import hooks, watermark
from dualwrite.fence import FENCE
from dualwrite.keys import Key, encode_key
from dualwrite.store import Dialect, Store

STATE = "dualwrite_state"
INSTANCES = "dualwrite_instances"
REPAIR_QUEUE = "dualwrite_repair_queue"
CHECKPOINTS = "dualwrite_checkpoints"
SPECS = "dualwrite_specs"

AUTHORITATIVE_SIDES = ("old", "new")
DEFAULT_LIVE_SECONDS = 15.0


@dataclass(frozen=True)
class ControlState:
    """What applications read: the published phase of one migration."""

    migration: str
    phase: str
    epoch: int
    paused: bool
    overrides: dict[str, Any] = field(default_factory=dict)
    updated_at: datetime | str | None = None


@dataclass(frozen=True)
class BarrierState:
    """Who has (not) seen an epoch among the live instances."""

    epoch: int
    live: int
    lagging: list[str]

    @property
    def passed(self) -> bool:
        return not self.lagging


@dataclass(frozen=True)
class RepairEntry:
    id: int
    table: str
    key: list[Any]
    reason: str
    attempts: int
    authoritative: str


@dataclass(frozen=True)
class Checkpoint:
    cursor: list[Any] | None
    rows: int
    batches: int


# ---------------------------------------------------------------------------------------------------------
# dialect helpers


def _ddl(store: Store) -> list[str]:
    ts, ident, suffix = bk.ts_type(store), bk.identity_pk(store), bk.table_suffix(store)
    text = "TEXT"
    long_text = "MEDIUMTEXT" if store.dialect is Dialect.MYSQL else "TEXT"  # a spec may exceed 64 KiB
    if store.dialect is Dialect.POSTGRESQL:
        boolean = "BOOLEAN NOT NULL DEFAULT FALSE"
        default_now = "DEFAULT now()"
    elif store.dialect is Dialect.MYSQL:
        boolean = "BOOLEAN NOT NULL DEFAULT FALSE"
        default_now = "DEFAULT UTC_TIMESTAMP(6)"
    else:
        boolean = "INTEGER NOT NULL DEFAULT 0"
        default_now = f"DEFAULT ({bk.now_sql(store)})"
    return [
        f"CREATE TABLE IF NOT EXISTS {STATE} (migration VARCHAR(128) NOT NULL PRIMARY KEY, "
        f"phase VARCHAR(32) NOT NULL, epoch BIGINT NOT NULL, paused {boolean}, overrides {text} NOT NULL, "
        f"updated_at {ts} NOT NULL {default_now}){suffix}",
        f"CREATE TABLE IF NOT EXISTS {INSTANCES} (migration VARCHAR(128) NOT NULL, "
        f"instance_id VARCHAR(255) NOT NULL, seen_epoch BIGINT NOT NULL, heartbeat_at {ts} NOT NULL, "
        f"PRIMARY KEY (migration, instance_id)){suffix}",
        f"CREATE TABLE IF NOT EXISTS {REPAIR_QUEUE} (id {ident}, migration VARCHAR(128) NOT NULL, "
        f"table_name VARCHAR(255) NOT NULL, key_json {text} NOT NULL, reason {text} NOT NULL, "
        f"authoritative VARCHAR(8) NOT NULL DEFAULT 'old', enqueued_at {ts} NOT NULL {default_now}, "
        f"attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at {ts} NOT NULL {default_now}){suffix}",
        f"CREATE INDEX IF NOT EXISTS {REPAIR_QUEUE}_due ON {REPAIR_QUEUE} (migration, next_attempt_at)",
        f"CREATE TABLE IF NOT EXISTS {CHECKPOINTS} (migration VARCHAR(128) NOT NULL, "
        f"scope VARCHAR(255) NOT NULL, range_index INTEGER NOT NULL, cursor_json {text}, "
        f"rows_copied BIGINT NOT NULL, batches BIGINT NOT NULL, updated_at {ts} NOT NULL {default_now}, "
        f"PRIMARY KEY (migration, scope, range_index)){suffix}",
        f"CREATE TABLE IF NOT EXISTS {SPECS} (migration VARCHAR(128) NOT NULL, digest VARCHAR(64) NOT NULL, "
        f"spec_json {long_text} NOT NULL, published_at {ts} NOT NULL {default_now}, "
        f"PRIMARY KEY (migration, digest)){suffix}",
    ]


def _upsert(store: Store, table: str, cols: Sequence[str], keys: Sequence[str], *,
            values: Sequence[str] | None = None, guard: str | None = None) -> str:
    """An upsert statement; ``values`` are SQL expressions (default: placeholders); ``guard`` compares
    the stored row (``{old}``) with the incoming one (``{new}``) and skips the update when false."""
    vals = list(values) if values is not None else [store.paramstyle] * len(cols)
    head = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(vals)})"
    rest = [c for c in cols if c not in keys]
    if store.dialect is Dialect.MYSQL:
        if guard:
            cond = guard.format(old="", new="VALUES")
            # MySQL assigns left to right: columns read by the guard go last
            guarded = sorted(rest, key=lambda c: c in guard)
            sets = ", ".join(f"{c} = IF({cond}, VALUES({c}), {c})" for c in guarded)
        else:
            sets = ", ".join(f"{c} = VALUES({c})" for c in rest)
        return f"{head} ON DUPLICATE KEY UPDATE {sets}"
    sets = ", ".join(f"{c} = excluded.{c}" for c in rest)
    where = f" WHERE {guard.format(old=f'{table}.', new='excluded.')}" if guard else ""
    return f"{head} ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}{where}"


# ---------------------------------------------------------------------------------------------------------
# schema


def ensure_schema(store: Store) -> None:
    """Create the control tables if missing. Safe to call from several processes at once."""
    bk.create_all(store, _ddl(store) + watermark.ddl(store))


# ---------------------------------------------------------------------------------------------------------
# state (written by the workflow's activity, read by applications)


def publish_state(store: Store, migration: str, phase: str, epoch: int, *, paused: bool = False,
                  overrides: dict[str, Any] | None = None) -> None:
    """Publish a migration's state. An older epoch never overwrites a newer one (a retried, delayed
    publish of epoch 4 must not undo epoch 5); the same epoch may update ``paused`` and overrides."""
    hooks.point("phase.before_flip", phase=phase)
    p = store.paramstyle
    sql = _upsert(store, STATE, ["migration", "phase", "epoch", "paused", "overrides", "updated_at"],
                  ["migration"], values=[p, p, p, p, p, bk.now_sql(store)], guard="{old}epoch <= {new}(epoch)"
                  if store.dialect is Dialect.MYSQL else "{old}epoch <= {new}epoch")
    bk.execute(store, sql, [migration, phase, epoch, bool(paused) if store.dialect is not Dialect.SQLITE
                      else int(paused), json.dumps(overrides or {}, sort_keys=True)])
    hooks.point("phase.after_flip", phase=phase)


def read_state(store: Store, migration: str) -> ControlState | None:
    """The published state of ``migration``, or None before the workflow has published anything."""
    p = store.paramstyle
    rows = bk.query(store, f"SELECT migration, phase, epoch, paused, overrides, updated_at FROM {STATE} "
                         f"WHERE migration = {p}", [migration])
    if not rows:
        return None
    m, phase, epoch, paused, overrides, updated = rows[0]
    return ControlState(migration=m, phase=phase, epoch=int(epoch), paused=bool(paused),
                        overrides=json.loads(overrides or "{}"), updated_at=updated)


def is_fenced(overrides: Any, tenant: str | None) -> bool:
    """Whether writes of ``tenant`` (None: not tenant-scoped) are fenced by the published ``overrides``."""
    fence = overrides.get(FENCE) if isinstance(overrides, dict) else None
    if not isinstance(fence, dict):
        return False
    if fence.get("all"):
        return True
    return tenant is not None and tenant in (fence.get("tenants") or ())


def fence_overrides(overrides: dict[str, Any], tenants: Sequence[str] | None) -> dict[str, Any]:
    """``overrides`` with a write fence: ``tenants`` None fences the whole migration."""
    return {**overrides, FENCE: {"all": True} if tenants is None else {"tenants": sorted(tenants)}}


# ---------------------------------------------------------------------------------------------------------
# instances and the phase barrier


def record_instance_seen(store: Store, migration: str, instance_id: str, epoch: int) -> None:
    """An application instance reports that it now acts on ``epoch`` (and that it is alive)."""
    p = store.paramstyle
    sql = _upsert(store, INSTANCES, ["migration", "instance_id", "seen_epoch", "heartbeat_at"],
                  ["migration", "instance_id"], values=[p, p, p, bk.now_sql(store)])
    bk.execute(store, sql, [migration, instance_id, int(epoch)])


def forget_instance(store: Store, migration: str, instance_id: str) -> None:
    """A cleanly stopping instance leaves the barrier at once instead of timing out."""
    p = store.paramstyle
    bk.execute(store, f"DELETE FROM {INSTANCES} WHERE migration = {p} AND instance_id = {p}", [migration, instance_id])


def barrier(store: Store, migration: str, epoch: int, live_seconds: float = DEFAULT_LIVE_SECONDS) -> BarrierState:
    """Which live instances (heartbeat within ``live_seconds``) have not yet seen ``epoch``."""
    p = store.paramstyle
    since, param = bk.now_plus(store, -float(live_seconds))
    rows = bk.query(store, f"SELECT instance_id, seen_epoch FROM {INSTANCES} WHERE migration = {p} "
                         f"AND heartbeat_at >= {since} ORDER BY instance_id", [migration, param])
    lagging = [str(r[0]) for r in rows if int(r[1]) < epoch]
    return BarrierState(epoch=epoch, live=len(rows), lagging=lagging)


# ---------------------------------------------------------------------------------------------------------
# repair queue


def enqueue_repair(store: Store, migration: str, table: str, keys: Sequence[Key], *, reason: str = "",
                   authoritative: str = "old") -> int:
    """Durably record keys whose secondary write failed; the repair drain will mirror them.

    ``table`` is the *source* (old-side) table name of the spec; ``authoritative`` says which side held
    the good row image when the write failed ('new' after write cutover). Only keys are stored.
    """
    if authoritative not in AUTHORITATIVE_SIDES:
        raise ValueError(f"authoritative must be one of {AUTHORITATIVE_SIDES}")
    if not keys:
        return 0
    p = store.paramstyle
    sql = (f"INSERT INTO {REPAIR_QUEUE} (migration, table_name, key_json, reason, authoritative, attempts) "
           f"VALUES ({p}, {p}, {p}, {p}, {p}, 0)")
    rows = [(migration, table, json.dumps(encode_key(tuple(k))), reason[:500], authoritative) for k in keys]
    with store.connect() as conn:
        cur = conn.cursor()
        cur.executemany(sql, rows)
        cur.close()
        conn.commit()
    return len(rows)


def repair_queue_depth(store: Store, migration: str) -> int:
    p = store.paramstyle
    rows = bk.query(store, f"SELECT COUNT(*) FROM {REPAIR_QUEUE} WHERE migration = {p}", [migration])
    return int(rows[0][0])


def due_repairs(store: Store, migration: str, limit: int = 1000) -> list[RepairEntry]:
    """Queue entries whose next attempt is due, oldest first."""
    p = store.paramstyle
    now = bk.now_sql(store)
    rows = bk.query(store, f"SELECT id, table_name, key_json, reason, attempts, authoritative FROM {REPAIR_QUEUE} "
                         f"WHERE migration = {p} AND next_attempt_at <= {now} ORDER BY id LIMIT {int(limit)}",
                  [migration])
    return [RepairEntry(id=int(r[0]), table=str(r[1]), key=list(json.loads(r[2])), reason=str(r[3]),
                        attempts=int(r[4]), authoritative=str(r[5])) for r in rows]


def next_repair_due_in(store: Store, migration: str) -> float | None:
    """Seconds until the earliest deferred entry is due (0 if one is due now), None when empty."""
    p = store.paramstyle
    if store.dialect is Dialect.POSTGRESQL:
        expr = "EXTRACT(EPOCH FROM (MIN(next_attempt_at) - clock_timestamp()))"
    elif store.dialect is Dialect.MYSQL:
        expr = "TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), MIN(next_attempt_at)) / 1000000"
    else:
        expr = "(julianday(MIN(next_attempt_at)) - julianday('now')) * 86400.0"
    rows = bk.query(store, f"SELECT COUNT(*), {expr} FROM {REPAIR_QUEUE} WHERE migration = {p}", [migration])
    count, due = rows[0]
    if not count:
        return None
    return max(0.0, float(due or 0.0))


def complete_repairs(store: Store, ids: Sequence[int]) -> int:
    if not ids:
        return 0
    p = store.paramstyle
    done = 0
    for start in range(0, len(ids), 500):
        part = list(ids[start:start + 500])
        done += bk.execute(store, f"DELETE FROM {REPAIR_QUEUE} WHERE id IN ({', '.join([p] * len(part))})", part)
    return done


def defer_repairs(store: Store, ids: Sequence[int], delay_seconds: float) -> int:
    """Count a failed attempt and push the next one ``delay_seconds`` away (the caller's backoff)."""
    if not ids:
        return 0
    p = store.paramstyle
    later, param = bk.now_plus(store, delay_seconds)
    n = 0
    for start in range(0, len(ids), 500):
        part = list(ids[start:start + 500])
        n += bk.execute(store, f"UPDATE {REPAIR_QUEUE} SET attempts = attempts + 1, next_attempt_at = {later} "
                         f"WHERE id IN ({', '.join([p] * len(part))})", [param, *part])
    return n


# ---------------------------------------------------------------------------------------------------------
# backfill checkpoints


def save_checkpoint(store: Store, migration: str, scope: str, range_index: int, cursor: list[Any] | None,
                    rows: int, batches: int) -> None:
    """Record a range's committed cursor; never moves backwards (a stale retry cannot rewind it)."""
    p = store.paramstyle
    guard = "{old}batches <= {new}(batches)" if store.dialect is Dialect.MYSQL else "{old}batches <= {new}batches"
    sql = _upsert(store, CHECKPOINTS, ["migration", "scope", "range_index", "cursor_json", "rows_copied",
                                       "batches", "updated_at"], ["migration", "scope", "range_index"],
                  values=[p, p, p, p, p, p, bk.now_sql(store)], guard=guard)
    bk.execute(store, sql, [migration, scope[:255], int(range_index), json.dumps(cursor), int(rows), int(batches)])


def load_checkpoint(store: Store, migration: str, scope: str, range_index: int) -> Checkpoint | None:
    p = store.paramstyle
    rows = bk.query(store, f"SELECT cursor_json, rows_copied, batches FROM {CHECKPOINTS} WHERE migration = {p} "
                         f"AND scope = {p} AND range_index = {p}", [migration, scope[:255], int(range_index)])
    if not rows:
        return None
    cur, n, b = rows[0]
    return Checkpoint(cursor=json.loads(cur) if cur else None, rows=int(n), batches=int(b))


def clear_checkpoints(store: Store, migration: str, scope: str) -> int:
    p = store.paramstyle
    return bk.execute(store, f"DELETE FROM {CHECKPOINTS} WHERE migration = {p} AND scope = {p}",
                      [migration, scope[:255]])


def clear_checkpoints_except(store: Store, migration: str, scope: str) -> int:
    """Every checkpoint of ``migration`` but those of ``scope`` (an abort keeps the capture's end mark)."""
    p = store.paramstyle
    return bk.execute(store, f"DELETE FROM {CHECKPOINTS} WHERE migration = {p} AND scope <> {p}",
                      [migration, scope[:255]])


# ---------------------------------------------------------------------------------------------------------
# published specs (written once by the workflow's activity, read by workers resolving a spec reference)


def publish_spec(store: Store, migration: str, digest: str, spec_json: str) -> None:
    """Store a migration's spec under its digest; idempotent (the same digest always names the same JSON)."""
    sql = _upsert(store, SPECS, ["migration", "digest", "spec_json"], ["migration", "digest"])
    bk.execute(store, sql, [migration, digest, spec_json])


def load_spec(store: Store, migration: str, digest: str) -> str | None:
    """The JSON of the spec published under ``digest``, or None when it was never published."""
    p = store.paramstyle
    rows = bk.query(store, f"SELECT spec_json FROM {SPECS} WHERE migration = {p} AND digest = {p}",
                    [migration, digest])
    return str(rows[0][0]) if rows else None
