"""The relay's core: drain key logs (outbox, change log) and the repair queue through the mirror primitive.

A relay reads the oldest entries of a key log in id order, mirrors their keys from the store holding the log
(the store that was authoritative for the write) to the other store with :func:`dualwrite.mirror.mirror_keys`,
and deletes the entries it handled in the same transaction that held them locked. A crash anywhere leaves the
entries in place, so they are mirrored again: harmless, because a mirror copies the row as it is *now*.

Failures are split by kind. An unreachable store stops the drain (the caller backs off and retries; the log
keeps everything). A key the target rejects (a constraint, a value out of range) must not block the keys
behind it: it goes to the durable repair queue, where it is retried with backoff and counted.

The lag of a log is the age of its oldest entry when read (database clock): it is what the relay records.
No Temporal imports: the activities (``activities/relay.py``, ``activities/repair.py``) are thin wrappers
around these functions, reached through the capture methods' store side (:mod:`dualwrite.capture.store_side`).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dualwrite import bookkeeping as bk
from dualwrite import control
from dualwrite.errors import DualwriteError, RepairRefusedError, StoreError, StoreUnavailableError, is_unavailable
from dualwrite.keys import Key, decode_key
from dualwrite.mapping import TableMapping
from dualwrite.mirror import mirror_keys, normal_key
from dualwrite.outbox import CHANGELOG, OUTBOX, delete_entries, read_batch
from dualwrite.repair_guard import RepairGuard, authority_for
from dualwrite.stats import RELAY, RELAY_LAG, Stats
from dualwrite.store import Dialect, Store, is_transient, without_row_values
from dualwrite.triggers import authoritative_side

if TYPE_CHECKING:
    from dualwrite.spec import MigrationSpec

log = logging.getLogger("dualwrite.relay")

#: (source table of the spec, reverse) -> the mapping from the store holding the log to the other store
MappingFor = Callable[[str, bool], TableMapping]


@dataclass
class RelayResult:
    entries: int = 0
    mirrored: int = 0
    discarded: int = 0
    failed: int = 0
    batches: int = 0
    lag_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def __iadd__(self, other: RelayResult) -> RelayResult:
        self.entries += other.entries
        self.mirrored += other.mirrored
        self.discarded += other.discarded
        self.failed += other.failed
        self.batches += other.batches
        self.lag_seconds = max(self.lag_seconds, other.lag_seconds)
        for e in other.errors:
            if e not in self.errors and len(self.errors) < 5:
                self.errors.append(e)
        return self


def _short(exc: BaseException) -> str:
    from dualwrite.config import redact  # noqa: PLC0415

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{type(exc).__name__}: {redact(text)[:200]}"


def _mirror_isolated(source: Store, target: Store, mapping: TableMapping, keys: Sequence[Key]
                     ) -> tuple[int, list[Key], list[str]]:
    """Mirror keys one by one after a batch failed: (mirrored, failed keys, error texts)."""
    done, failed, errors = 0, [], []
    for key in keys:
        try:
            mirror_keys(source, target, mapping, [key])
            done += 1
        except StoreUnavailableError:
            raise
        except Exception as exc:  # one bad row must not block the rest
            if is_unavailable(exc):
                raise  # a cut connection is no bad row: the batch is read again
            failed.append(key)
            msg = _short(exc)
            if msg not in errors:
                errors.append(msg)
    return done, failed, errors


def _unmappable(exc: BaseException) -> bool:
    """Is this a verdict on the table itself (not in the spec, no mapping for this direction), so that its
    entries can never be mirrored and may be dropped?

    Building a mapping reflects both tables, so it also fails while a store is unreachable (a restarted
    worker's first batch during an outage): those errors are not dualwrite's own, or are store errors,
    and must leave the entries in the log for the next attempt. Dropping them lost every key of the batch
    until a verification found the rows (the chaos runs' outbox drift)."""
    return isinstance(exc, DualwriteError) and not isinstance(exc, StoreError)


def drain_log_batch(log_store: Store, other: Store, migration: str, mapping_for: MappingFor, *, reverse: bool,
                    log_table: str = OUTBOX, limit: int = 500, discard: bool = False,
                    control_store: Store | None = None) -> RelayResult:
    """Handle the oldest ``limit`` entries of one key log; returns what was done (entries 0 = log empty).

    ``reverse``: the log is in the new store (written while new was authoritative): mirror new -> old.
    ``discard``: drop the entries without mirroring (the other store is retired).
    """
    out = RelayResult()
    sqlite = log_store.dialect is Dialect.SQLITE
    with log_store.connect() as conn:
        entries = read_batch(conn, log_store, migration, log=log_table, limit=limit, lock=not sqlite)
        if not entries:
            conn.rollback()
            return out
        if sqlite:
            conn.rollback()  # no row locks there; a long read transaction would only block writers
        out.entries, out.batches = len(entries), 1
        out.lag_seconds = max(e.age_seconds for e in entries)
        if not discard:
            by_table: dict[str, list[Key]] = defaultdict(list)
            for e in entries:
                by_table[e.table].append(tuple(e.key))
            mirror_logged(log_store, other, migration, mapping_for, by_table, reverse=reverse,
                          control_store=control_store, out=out)
        else:
            out.discarded += len(entries)
        delete_entries(conn, log_store, [e.id for e in entries], log=log_table)
        conn.commit()
    return out


def mirror_logged(log_store: Store, other: Store, migration: str, mapping_for: MappingFor,
                  by_table: dict[str, list[Key]], *, reverse: bool, control_store: Store | None,
                  out: RelayResult) -> None:
    """Mirror the keys of a batch of key-log entries (wire keys by spec table) from ``log_store`` to ``other``,
    counting into ``out``. A table with no mapping is dropped; keys the target rejects go to the repair queue
    one by one; an unreachable store or a transient error raises (the caller keeps the entries). Shared by
    the SQL key logs here and the Redis stream outbox (:mod:`dualwrite.capture.stream_side`)."""
    for table, wire_keys in by_table.items():
        try:
            mapping = mapping_for(table, reverse)
        except Exception as exc:
            if not _unmappable(exc):
                raise  # the mapping could not be built now (a store unreachable): keep the entries
            log.warning("relay %s: dropping %d entries of table %s: %s", migration, len(wire_keys), table,
                        _short(exc))
            out.discarded += len(wire_keys)
            continue
        keys = [k for k in (decode_key(list(w), mapping.key_kinds) for w in wire_keys) if k is not None]
        try:
            res = mirror_keys(log_store, other, mapping, keys)
            out.mirrored += res.keys
        except StoreUnavailableError:
            raise
        except Exception as exc:
            if is_transient(exc) or is_unavailable(exc):
                raise  # a deadlock, a cut connection: the whole batch is retried, nothing was deleted
            done, failed, errors = _mirror_isolated(log_store, other, mapping, keys)
            out.mirrored += done
            if failed:
                if control_store is None:
                    raise
                control.enqueue_repair(control_store, migration, table, failed,
                                       reason=f"relay: {errors[0] if errors else _short(exc)}",
                                       authoritative="new" if reverse else "old")
                out.failed += len(failed)
                out.errors += [e for e in errors if e not in out.errors][:5 - len(out.errors)]


def drain(old: Store, new: Store, migration: str, mapping_for: MappingFor, *,
          logs: Sequence[str] = (OUTBOX, CHANGELOG), directions: Sequence[str] = ("old", "new"),
          discard: Sequence[str] = (), limit: int = 500, max_seconds: float = 0.0,
          control_store: Store | None = None, stats: Stats | None = None,
          should_stop: Callable[[], bool] | None = None,
          on_batch: Callable[[RelayResult], None] | None = None) -> RelayResult:
    """Drain the key logs until they are empty (or ``max_seconds`` passed, or ``should_stop``).

    ``directions``: which stores' logs to drain ('old': mirror old -> new; 'new': new -> old).
    ``discard``: directions whose entries are dropped unmirrored. Logs that do not exist are skipped.
    """
    total = RelayResult()
    started = time.monotonic()
    stores = {"old": (old, new), "new": (new, old)}
    pending = [(side, lg) for side in directions for lg in logs]
    missing: set[tuple[str, str]] = set()
    while pending:
        progressed = False
        for side, lg in pending:
            if (side, lg) in missing:
                continue
            if should_stop is not None and should_stop():
                return total
            source, target = stores[side]
            try:
                res = drain_log_batch(source, target, migration, mapping_for, reverse=side == "new", log_table=lg,
                                      limit=limit, discard=side in discard, control_store=control_store)
            except Exception as exc:
                if _is_missing_table(exc):
                    missing.add((side, lg))
                    continue
                raise
            if res.entries:
                progressed = True
                total += res
                if stats is not None:
                    stats.record(counts=[(RELAY, "entries", res.entries), (RELAY, "mirrored", res.mirrored),
                                         (RELAY, "failed", res.failed), (RELAY, "discarded", res.discarded)])
                    stats.gauge(RELAY_LAG, res.lag_seconds)
                if on_batch is not None:
                    on_batch(total)
        if not progressed:
            break
        if max_seconds and time.monotonic() - started > max_seconds:
            break
    return total


def _is_missing_table(exc: BaseException) -> bool:
    text = str(exc).lower()
    return ("does not exist" in text or "doesn't exist" in text or "no such table" in text) and (
        OUTBOX in text or CHANGELOG in text or "relation" in text)


# ---------------------------------------------------------------------------------------------------------
# the repair queue


@dataclass
class RepairDrainResult:
    mirrored: int = 0
    failed: int = 0
    refused: int = 0
    """keys the repair guard kept queued (authority moved, or a write fence is up for their scope)"""
    errors: list[str] = field(default_factory=list)


def repair_authority(control_store: Store, spec: MigrationSpec, *, under_fence: bool = False) -> str | None:
    """Which store repairs read from, from the published state: 'old' / 'new'; None where authority is per
    tenant (then each entry's recorded side decides); 'fenced' while a write fence is published and the
    caller is not the workflow's own fenced drain (authority is moving: no repair may write then)."""
    state = control.read_state(control_store, spec.name)
    if state is None:
        return "old"
    if control.is_fenced(state.overrides, None) and not under_fence:
        return "fenced"
    if spec.tenant_tables and (state.overrides or {}).get("tenants"):
        return None
    return authoritative_side(state.phase)


def expedite_repairs(control_store: Store, migration: str) -> int:
    """Make every entry of the migration's repair queue due now (its backoff is cut short); returns how many.

    The workflow's drain under a write fence calls this first: authority may move only once every key the
    queue holds has been mirrored into the gaining store, so an entry that an earlier failure deferred by
    minutes must be tried now, not skipped as "not due" (the [T2-5] loss: the flip went ahead while the
    queue still held acknowledged writes of the losing store). The attempt count stays, so a key that fails
    again is deferred as long as before."""
    p, now = control_store.paramstyle, bk.now_sql(control_store)
    return bk.execute(control_store, f"UPDATE {control.REPAIR_QUEUE} SET next_attempt_at = {now} "
                                     f"WHERE migration = {p} AND next_attempt_at > {now}", [migration])


def repair_batch(control_store: Store, old: Store, new: Store, migration: str, mapping_for: MappingFor,
                 entries: Sequence[control.RepairEntry], *, authority: str | None = None,
                 base_backoff_seconds: float = 2.0, max_backoff_seconds: float = 300.0,
                 under_fence: bool = False) -> RepairDrainResult:
    """Mirror one batch of due repair-queue entries; a group that fails is deferred with exponential backoff
    and jitter, and never stops the others.

    A repair writes only into the store that is not authoritative *now* (rule 4, docs/architecture.md), from
    the authoritative store's current row. ``authority`` ('old' / 'new'), when the caller knows which store is
    authoritative for the whole migration, decides the direction of every key. Without it (authority is per
    tenant, or the caller did not read it) the published state decides key by key: a key of a tenant table
    follows the authority of the tenant that owns its row (:func:`_current_sides`), any other key the
    migration's. The side recorded with the entry decides only when nothing is published.

    The mirror runs with ``force=False`` (its default) and under the key's lock, which already makes the
    image written the newest committed one: the version guard is off under the lock either way.

    Every group (table, direction, tenant) runs under the repair guard (:mod:`dualwrite.repair_guard`) for its
    scope: the authority read before the batch may be stale by the time a slow group commits (a store that
    hangs for seconds), and a group must never land in the old direction after a flip, nor while its scope's
    write fence is up. A refused group stays queued, untouched (counted in ``refused``); the caller reads the
    authority again. ``under_fence``: the workflow's own drain under the write fence."""
    out = RepairDrainResult()
    latest: dict[tuple[str, str], control.RepairEntry] = {}
    ids: dict[tuple[str, str], list[int]] = defaultdict(list)
    for e in entries:
        k = (e.table, repr(e.key))
        ids[k].append(e.id)
        if k not in latest or e.id > latest[k].id:
            latest[k] = e
    state = control.read_state(control_store, migration) if authority is None else None
    groups: dict[tuple[str, str, str | None], list[tuple[str, str]]] = defaultdict(list)
    if authority is not None or state is None:
        for k, e in latest.items():
            groups[(e.table, authority or e.authoritative, None)].append(k)
    else:
        groups = _current_sides(state, old, new, mapping_for, latest)
    for (table, side, tenant), keys in groups.items():
        all_ids = [i for k in keys for i in ids[k]]
        try:
            reverse = side == "new"
            mapping = mapping_for(table, reverse)
            source, target = (new, old) if reverse else (old, new)
            decoded = [decode_key(latest[k].key, mapping.key_kinds) for k in keys]
            held = (RepairGuard(control_store, migration, side, tenant, under_fence=under_fence).holding()
                    if authority is not None or state is not None else contextlib.nullcontext())
            with held:
                mirror_keys(source, target, mapping, [d for d in decoded if d is not None], force=False)
        except RepairRefusedError as exc:
            log.warning("%s; %d repair key(s) of %s stay queued", exc, len(keys), table)
            out.refused += len(keys)
            continue
        except Exception as exc:  # noqa: BLE001 - one bad group must not stop the drain
            attempts = max(latest[k].attempts for k in keys)
            delay = min(max_backoff_seconds, base_backoff_seconds * 2 ** attempts)
            delay *= 0.8 + 0.4 * random.random()  # noqa: S311 - jitter, not crypto
            control.defer_repairs(control_store, all_ids, delay)
            out.failed += len(keys)
            driver_exc = getattr(exc, "orig", None) or exc
            clean = without_row_values(driver_exc, f"repairing {table}")  # no key or row values in history
            msg = f"table {table}: {_short(exc if clean is driver_exc else clean)}"
            if msg not in out.errors and len(out.errors) < 5:
                out.errors.append(msg)
            log.warning("repair of %d keys of %s failed, retry in %.0fs: %s", len(keys), table, delay, msg)
            continue
        control.complete_repairs(control_store, all_ids)
        out.mirrored += len(keys)
    return out


def _current_sides(state: control.ControlState, old: Store, new: Store, mapping_for: MappingFor,
                   latest: dict[tuple[str, str], control.RepairEntry]
                   ) -> dict[tuple[str, str, str | None], list[tuple[str, str]]]:
    """Group queued keys by (table, side authoritative now, tenant) under the published ``state``.

    A key of a table with a tenant column belongs to the tenant that owns its row on the old store (or, gone
    there, on the new one); a tenant that moved on its own has its own authority. Other keys (and keys whose
    row is on neither store: mirroring them is a no-op either way) follow the migration's phase."""
    from dualwrite import tenancy  # noqa: PLC0415 - verification machinery, only for per-tenant authority
    from dualwrite.sqlgen import source_side, target_side  # noqa: PLC0415

    overrides = state.overrides or {}
    per_tenant = isinstance(overrides.get("tenants"), dict) and bool(overrides["tenants"])
    by_table: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for k, e in latest.items():
        by_table[e.table].append(k)
    out: dict[tuple[str, str, str | None], list[tuple[str, str]]] = defaultdict(list)
    for table, keys in by_table.items():
        owner: dict[tuple[str, str], str | None] = {}
        mapping = mapping_for(table, False)
        if per_tenant and mapping.tenant_column:
            decoded = {k: decode_key(latest[k].key, mapping.key_kinds) for k in keys}
            wanted = [d for d in decoded.values() if d is not None]
            old_col, new_col = tenancy.tenant_columns(mapping)
            on_old = tenancy.tenants_of(source_side(mapping, old), old_col, wanted)
            on_new = tenancy.tenants_of(target_side(mapping, new), new_col, wanted)
            for k, d in decoded.items():
                nk = normal_key(tuple(d)) if d is not None else None
                owner[k] = on_old.get(nk) if nk in on_old else on_new.get(nk) if nk is not None else None
        for k in keys:
            tenant = owner.get(k)
            out[(table, authority_for(state.phase, overrides, tenant), tenant)].append(k)
    return out


def drain_repairs(control_store: Store, old: Store, new: Store, migration: str, mapping_for: MappingFor, *,
                  batch: int = 1000, base_backoff_seconds: float = 2.0, max_backoff_seconds: float = 300.0,
                  max_rounds: int = 0, authority: str | None = None) -> RepairDrainResult:
    """Mirror every *due* key of the repair queue, batch by batch (:func:`repair_batch`); ``max_rounds``
    bounds the number of batches (0: until nothing is due)."""
    out = RepairDrainResult()
    rounds = 0
    while True:
        entries = control.due_repairs(control_store, migration, batch)
        if not entries:
            return out
        rounds += 1
        res = repair_batch(control_store, old, new, migration, mapping_for, entries, authority=authority,
                           base_backoff_seconds=base_backoff_seconds, max_backoff_seconds=max_backoff_seconds)
        out.mirrored += res.mirrored
        out.failed += res.failed
        out.refused += res.refused
        out.errors += [e for e in res.errors if e not in out.errors][:max(0, 5 - len(out.errors))]
        if max_rounds and rounds >= max_rounds:
            return out
        if res.refused and not res.mirrored and not res.failed:
            return out  # what is due is held by the guard: the next drain reads the authority again
