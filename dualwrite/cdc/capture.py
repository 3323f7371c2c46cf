"""Strategy ``cdc``: the relay's key source is the database's own log instead of a trigger-written table.

One interface over both engines, used by the relay activities:

- :func:`setup` (relay setup, at PREPARE, before the first backfill range is copied): PostgreSQL gets a
  publication for the migrated tables and a ``pgoutput`` slot; MariaDB/MySQL records the binlog position
  where capture starts. Both stores get capture, because after write cutover the new store's changes are
  mirrored back to the old store for rollback.
- :func:`drain_batch`: read a bounded batch of whole transactions from the authoritative store's log,
  mirror their keys with the one mirror primitive (which re-reads the authoritative row under the key's
  lock, so a change captured during the backfill wins over the copy, and a replayed batch is harmless), and
  only then move the position (slot advance / checkpoint).
- :func:`skip`: the store that is *not* authoritative refuses writes that bypass dualwrite (denied writes),
  so what its log holds is dualwrite's own writes (backfill, mirrors, repairs): they are skipped, not
  mirrored back. The skip reads the log's end first and checks the denial afterwards: a write the
  application made after the denial was lifted is always past that end, so nothing of it is skipped.
- :func:`teardown` (CLEANUP, rollback to PREPARE): drop slot and publication / forget the position.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from dualwrite import bookkeeping as bk
from dualwrite import control, triggers
from dualwrite.cdc import binlog, pg
from dualwrite.cdc.pg import CaptureError, SchemaChangedError, TableKeys
from dualwrite.errors import (
    AuthorityMovedError,
    CaptureEndedError,
    CaptureLostError,
    CaptureTruncatedError,
    StoreUnavailableError,
    is_unavailable,
)
from dualwrite.keys import Key
from dualwrite.mapping import TableMapping
from dualwrite.mirror import mirror_keys, normal_key
from dualwrite.relay import RelayResult, _mirror_isolated, _short
from dualwrite.store import Dialect, Store, is_transient

log = logging.getLogger("dualwrite.cdc")

__all__ = ["CaptureError", "SchemaChangedError", "TableKeys", "drain_batch", "lag_bytes", "setup", "skip", "teardown"]


def _check_dialect(store: Store) -> None:
    if store.dialect is Dialect.SQLITE:
        raise CaptureError(f"store {store.name!r} is SQLite: it has no change log to capture from; "
                           "use strategy triggers or outbox")


#: the control store's checkpoint scope that marks a migration's capture as ended (abort, CLEANUP)
ENDED_SCOPE = "cdc:ended"


def end(control_store: Store, migration: str) -> None:
    """Mark the migration's capture as ended (before it is taken down): :func:`setup` refuses from now on.

    Durable, in the control store, because what could create a slot again is an activity that outlived
    the decision (a terminated relay's, a late denial's retry), in any worker."""
    control.save_checkpoint(control_store, migration, ENDED_SCOPE, 0, ["ended"], 0, 1)


def ended(control_store: Store, migration: str) -> bool:
    try:
        return control.load_checkpoint(control_store, migration, ENDED_SCOPE, 0) is not None
    except Exception as exc:
        if control_tables_missing(exc):
            return False  # no control tables yet: nothing ever ended
        raise


def control_tables_missing(exc: Exception) -> bool:
    text = str(exc).lower()
    return "does not exist" in text or "doesn't exist" in text or "no such table" in text


def reopen(control_store: Store, migration: str) -> None:
    """A new run of the migration (its preflight): capture may start again."""
    control.clear_checkpoints(control_store, migration, ENDED_SCOPE)


def setup(store: Store, control_store: Store, migration: str, tables: Sequence[str]) -> bool:
    """Start capture on ``store`` for ``tables`` (idempotent; True when it starts now).

    Refused (:class:`CaptureEndedError`) once the migration's capture has ended. The mark is read before
    and again after creating: an abort marks first and drops afterwards, so either it drops what was
    created here, or this sees its mark and takes it down itself; no slot is left either way."""
    _check_dialect(store)
    _refuse_ended(control_store, migration)
    if store.dialect is Dialect.POSTGRESQL:
        started = pg.setup(store, migration, tables)
        # noted once the slot exists: a slot missing later lost changes (not one that was never set up)
        _note_started(control_store, migration, store)
    else:
        started = binlog.setup(control_store, migration, store)
    if ended(control_store, migration):
        teardown(store, control_store, migration)
        _refuse_ended(control_store, migration)
    return started


def restart(store: Store, control_store: Store, migration: str, tables: Sequence[str]) -> None:
    """Capture on ``store`` again from the end of its log after it lost changes (the loss stays noted)."""
    if store.dialect is Dialect.MYSQL:
        binlog.teardown(control_store, migration, store)  # the stored position is gone from the binlog
    setup(store, control_store, migration, tables)


def _note_started(control_store: Store, migration: str, store: Store) -> None:
    try:
        control.save_checkpoint(control_store, migration, _started_scope(store), 0, ["slot"], 0, 1)
    except Exception as exc:
        if not control_tables_missing(exc):
            raise
        control.ensure_schema(control_store)  # a control store used for the first time (the relay makes them)
        control.save_checkpoint(control_store, migration, _started_scope(store), 0, ["slot"], 0, 1)


def _refuse_ended(control_store: Store, migration: str) -> None:
    if ended(control_store, migration):
        raise CaptureEndedError(f"migration {migration!r} was aborted or cleaned up: its capture is not started "
                                "again (a new run of the migration starts it)")


def teardown(store: Store, control_store: Store, migration: str) -> None:
    """Stop capture on ``store`` (idempotent). Its loss marks go too: what follows (CLEANUP, or a rollback
    to PREPARE and a new backfill with its repairing verification) no longer depends on what was lost."""
    with contextlib.suppress(Exception):  # no control tables (never set up): nothing noted
        for scope in (_started_scope(store), _lost_scope(store)):
            control.clear_checkpoints(control_store, migration, scope)
    if store.dialect is Dialect.POSTGRESQL:
        pg.teardown(store, migration)
    elif store.dialect is Dialect.MYSQL:
        binlog.teardown(control_store, migration, store)


def _started_scope(store: Store) -> str:
    return f"cdc:slot:{store.name}"


def _lost_scope(store: Store) -> str:
    return f"cdc:lost:{store.name}"


def note_loss(control_store: Store, migration: str, store: Store, what: str) -> None:
    """Keep, in the control store, that capture on ``store`` missed changes, and when (shown by status; the
    cutover gates want a verification with repair after it, :mod:`dualwrite.cdc.gate`)."""
    cp = control.load_checkpoint(control_store, migration, _lost_scope(store), 0)
    n = cp.batches + 1 if cp is not None else 1
    control.save_checkpoint(control_store, migration, _lost_scope(store), 0, [what[:500], time.time()], 0, n)


def losses(control_store: Store, migration: str, stores: Sequence[Store]) -> list[str]:
    """What capture missed on ``stores`` (empty: nothing): a verification with repair must level the stores
    before any cutover relies on them."""
    return [what for what, _ in losses_at(control_store, migration, stores)]


def losses_at(control_store: Store, migration: str, stores: Sequence[Store]) -> list[tuple[str, float]]:
    """(what, unix time of the latest) per store whose capture missed changes."""
    out: list[tuple[str, float]] = []
    for store in stores:
        try:
            cp = control.load_checkpoint(control_store, migration, _lost_scope(store), 0)
        except Exception as exc:
            if control_tables_missing(exc):
                continue
            raise
        if cp is not None and cp.cursor:
            out.append((str(cp.cursor[0]), float(cp.cursor[1]) if len(cp.cursor) > 1 else 0.0))
    return out


def loss_marks(control_store: Store, migration: str, stores: Sequence[Store]) -> dict[str, int]:
    """The loss sequence of each store now (store name -> how many losses were ever noted on it; 0: none).

    A verification records it when it starts and hands it to :func:`clear_losses` when it ends: a loss noted
    in between has a higher number, so it is kept. One counter in the control store, never a clock: the
    worker's and the workflow's clocks need not agree."""
    out: dict[str, int] = {}
    for store in stores:
        try:
            cp = control.load_checkpoint(control_store, migration, _lost_scope(store), 0)
        except Exception as exc:
            if control_tables_missing(exc):
                out[store.name] = 0
                continue
            raise
        out[store.name] = cp.batches if cp is not None else 0
    return out


def clear_losses(control_store: Store, migration: str, stores: Sequence[Store], before: float | None = None,
                 upto: dict[str, int] | None = None) -> list[str]:
    """After a verification with repair levelled the stores: forget their loss marks. What was cleared.

    ``upto`` (:func:`loss_marks` when the verification started): only losses numbered up to it go, in one
    statement, so a loss noted since (a higher number) stays. The mark's row is kept with its number and no
    text: the sequence never restarts, so an older verification's ``upto`` cannot reach a newer loss.
    ``before`` (histories from before ``upto``): only a mark whose latest loss was noted before that unix time;
    the clear is conditional on the number read, so a loss noted between the read and the clear stays.
    Neither: every mark goes (a test's, or an operator's, deliberate reset)."""
    cleared: list[str] = []
    for store in stores:
        marks = losses_at(control_store, migration, [store])
        if not marks:
            continue
        if upto is not None:
            if _blank_mark(control_store, migration, store, int(upto.get(store.name, 0))):
                cleared.append(marks[0][0])
            continue
        if before is not None:
            cp = control.load_checkpoint(control_store, migration, _lost_scope(store), 0)
            if cp is None or marks[0][1] >= before:
                continue
            if _blank_mark(control_store, migration, store, cp.batches):
                cleared.append(marks[0][0])
            continue
        control.clear_checkpoints(control_store, migration, _lost_scope(store))
        cleared.append(marks[0][0])
    return cleared


def _blank_mark(control_store: Store, migration: str, store: Store, upto: int) -> bool:
    """Blank ``store``'s loss mark if its number is at most ``upto`` (one statement); whether it was."""
    p = control_store.paramstyle
    return bk.execute(control_store, f"UPDATE {control.CHECKPOINTS} SET cursor_json = {p} WHERE migration = {p} "
                                     f"AND scope = {p} AND range_index = 0 AND batches <= {p} AND cursor_json "
                                     f"IS NOT NULL AND cursor_json <> {p}",
                      [json.dumps(None), migration, _lost_scope(store), int(upto), json.dumps(None)]) > 0


def _lost(control_store: Store, migration: str, store: Store, why: str) -> CaptureLostError:
    msg = (f"store {store.name!r}: capture of migration {migration!r} lost changes: {why}; changes in between "
           "were never mirrored: restart the relay, then run a verification with repair before any cutover")
    note_loss(control_store, migration, store, msg)
    return CaptureLostError(msg)


def _read_pg(store: Store, control_store: Store, migration: str, tables: Sequence[TableKeys],
             limit: int) -> pg.Batch:
    try:
        return pg.read_batch(store, migration, tables, limit)
    except CaptureError:
        if pg.slot_exists(store, migration) or ended(control_store, migration):
            raise
        if control.load_checkpoint(control_store, migration, _started_scope(store), 0) is None:
            raise  # never set up (or taken down): not a loss
        slot, _ = pg.capture_names(migration, store.name)
        raise _lost(control_store, migration, store, f"the replication slot {slot} vanished after capture "
                    "had started (dropped by hand, or invalidated by max_slot_wal_keep_size)") from None


def drain_batch(store: Store, other: Store, control_store: Store, migration: str, tables: Sequence[TableKeys],
                mapping_for: Callable[[str], TableMapping], *, reverse: bool, limit: int = 5000,
                guarded: bool = False) -> RelayResult:
    """Mirror one batch of captured changes of ``store`` to ``other``; entries 0 = nothing captured.

    ``tables`` name the migrated tables as they are on ``store``; ``mapping_for(name)`` gives the mapping
    from ``store`` to ``other`` for one of them. A key the target rejects goes to the repair queue, so it
    does not hold the log back; an unreachable store or a deadlock raises, and the position stays.

    ``guarded``: ``other`` refuses the application's writes (denied writes) and must still do so in the
    transaction that mirrors into it, or :class:`AuthorityMovedError` is raised and nothing is advanced (the
    round read a phase that has just changed)."""
    out = RelayResult()
    if store.dialect is Dialect.POSTGRESQL:
        try:
            pbatch = _read_pg(store, control_store, migration, tables, limit)
        except pg.SlotBusyError:
            return out  # the other reader (relay or catch-up) is applying it
        keys, changes, lag, done = pbatch.keys, pbatch.changes, pbatch.lag_seconds, pbatch.end_lsn is not None
        truncated = pbatch.truncated
        if not done and pbatch.idle_lsn is not None:
            # nothing of ours up to the WAL flushed before the read: move there, so an idle source (or one
            # busy with other tables) does not hold WAL back, and a catch-up point is reached
            with contextlib.suppress(pg.SlotBusyError):
                pg.advance(store, migration, pbatch.idle_lsn)
    else:
        at = binlog.load_position(control_store, migration, store)
        purged = binlog.purged_past(store, at) if at is not None else None
        if purged is not None:
            raise _lost(control_store, migration, store, purged)
        bbatch = binlog.read_batch(control_store, migration, store, tables, limit)
        keys, changes, lag, done = bbatch.keys, bbatch.changes, bbatch.lag_seconds, bbatch.end is not None
        truncated = bbatch.truncated
    if not done:
        return out
    out.entries, out.batches, out.lag_seconds = changes, 1, lag
    for table, table_keys in keys.items():
        mapping = mapping_for(table)
        commit_if = _still_denied(other, migration, mapping.target_table) if guarded else None
        _mirror(store, other, control_store, migration, mapping, table, table_keys, reverse, out, commit_if)
    if store.dialect is Dialect.POSTGRESQL:
        assert pbatch.end_lsn is not None
        with contextlib.suppress(pg.SlotBusyError):  # the other reader advances it; re-reading is harmless
            pg.advance(store, migration, max(pbatch.end_lsn, pbatch.idle_lsn or 0))
    else:
        assert bbatch.end is not None
        binlog.save_position(control_store, migration, store, bbatch.end)
    if truncated:  # reported after the rest was applied and the position moved past it
        msg = (f"store {store.name!r}: TRUNCATE of {', '.join(dict.fromkeys(truncated))} captured for migration "
               f"{migration!r}; a TRUNCATE is not mirrored: run a verification with repair before any cutover")
        note_loss(control_store, migration, store, msg)
        raise CaptureTruncatedError(msg)
    return out


def _still_denied(target: Store, migration: str, table: str) -> Callable[[Any], bool]:
    return lambda conn: triggers.still_denied(conn, target, migration, table)


def _mirror(store: Store, other: Store, control_store: Store, migration: str, mapping: TableMapping, table: str,
            keys: list[Key], reverse: bool, out: RelayResult, commit_if: Callable[[Any], bool] | None) -> None:
    try:
        res = mirror_keys(store, other, mapping, keys, commit_if=commit_if)
        out.mirrored += res.keys
    except (StoreUnavailableError, AuthorityMovedError):
        raise
    except Exception as exc:
        if is_transient(exc) or is_unavailable(exc):
            raise  # a deadlock, a cut connection: the batch is read again, nothing was advanced
        if commit_if is not None:  # key by key, each under the same check
            done, failed, errors = _isolated_guarded(store, other, mapping, list(dict.fromkeys(keys)), commit_if)
        else:
            done, failed, errors = _mirror_isolated(store, other, mapping, list(dict.fromkeys(keys)))
        out.mirrored += done
        if failed:
            control.enqueue_repair(control_store, migration, table, failed,
                                   reason=f"relay: {errors[0] if errors else _short(exc)}",
                                   authoritative="new" if reverse else "old")
            out.failed += len(failed)
            out.errors += [e for e in errors if e not in out.errors][:5 - len(out.errors)]


def _isolated_guarded(store: Store, other: Store, mapping: TableMapping, keys: list[Key],
                      commit_if: Callable[[Any], bool]) -> tuple[int, list[Key], list[str]]:
    done, failed, errors = 0, [], []
    for key in keys:
        try:
            mirror_keys(store, other, mapping, [key], commit_if=commit_if)
            done += 1
        except (StoreUnavailableError, AuthorityMovedError):
            raise
        except Exception as exc:  # one bad row must not block the rest
            if is_unavailable(exc):
                raise  # a cut connection is no bad row: the batch is read again
            failed.append(key)
            if _short(exc) not in errors:
                errors.append(_short(exc))
    return done, failed, errors


def skip(store: Store, control_store: Store, migration: str, still_denied: Callable[[], bool]) -> bool:
    """Move ``store``'s capture to the end of its log without mirroring (see the module docstring).

    The end is read *before* ``still_denied`` is asked: True means the application could not write there
    up to that end, so only dualwrite's own writes are skipped. False: nothing is moved."""
    if store.dialect is Dialect.POSTGRESQL:
        if pg.lag(store, migration) is None:
            return False
        lsn = pg.current_lsn(store)
        if not still_denied():
            return False
        try:
            pg.advance(store, migration, lsn)
        except pg.SlotBusyError:
            return False
        return True
    if store.dialect is Dialect.MYSQL:
        if binlog.load_position(control_store, migration, store) is None:
            return False
        pos = binlog.current_position(store)
        if not still_denied():
            return False
        binlog.save_position(control_store, migration, store, pos)
        return True
    return False


def lag_bytes(store: Store, control_store: Store, migration: str) -> int | None:
    """How far capture on ``store`` is behind the end of its log, in bytes (None: no capture there)."""
    if store.dialect is Dialect.POSTGRESQL:
        res = pg.lag(store, migration)
        return None if res is None else res[0]
    if store.dialect is Dialect.MYSQL:
        at = binlog.load_position(control_store, migration, store)
        if at is None:
            return None
        end = binlog.current_position(store)
        if at[0] == binlog.GTID:  # GTIDs count transactions, not bytes
            return 0 if end[1] == at[1] else None
        return max(0, int(end[1]) - int(at[1])) if end[0] == at[0] else None
    return None


def end_point(store: Store, control_store: Store, migration: str) -> object | None:
    """The end of ``store``'s log now (a catch-up's drain point); None without capture there."""
    if store.dialect is Dialect.POSTGRESQL:
        return pg.current_lsn(store) if pg.slot_exists(store, migration) else None
    if store.dialect is Dialect.MYSQL:
        if binlog.load_position(control_store, migration, store) is None:
            return None
        return binlog.current_position(store)
    return None


def reached(store: Store, control_store: Store, migration: str, point: object) -> bool:
    """Has capture on ``store`` applied everything up to ``point`` (from :func:`end_point`)?"""
    if store.dialect is Dialect.POSTGRESQL:
        at = pg.confirmed(store, migration)
        return at is not None and isinstance(point, int) and at >= point
    pos = binlog.load_position(control_store, migration, store)
    if pos is None or not isinstance(point, tuple):
        return False
    if pos[0] == binlog.GTID:
        return binlog.gtid_reached(pos[1], str(point[1]))
    return (pos[0], int(pos[1])) >= (str(point[0]), int(point[1]))


def pending_keys(store: Store, control_store: Store, migration: str, table: str, key: Sequence[str],
                 kinds: Sequence[Any], limit: int = 20_000) -> set[tuple[Any, ...]]:
    """Keys of ``table`` captured on ``store`` and not applied yet (in flight), normalized like the
    mirror's keys: a verification counts their differences as in flight, not as unresolved. Read without
    moving anything; a slot the relay holds right now is asked again a few times, then nothing is known."""
    tk = [TableKeys(table, list(key), list(kinds))]
    for _ in range(20):
        try:
            if store.dialect is Dialect.POSTGRESQL:
                if not pg.slot_exists(store, migration):
                    return set()
                found = pg.read_batch(store, migration, tk, limit).keys
            elif store.dialect is Dialect.MYSQL:
                if binlog.load_position(control_store, migration, store) is None:
                    return set()
                found = binlog.read_batch(control_store, migration, store, tk, limit).keys
            else:
                return set()
        except pg.SlotBusyError:
            time.sleep(0.05)
            continue
        return {normal_key(k) for keys in found.values() for k in keys}
    return set()


#: retained log past which the relay warns (bytes)
RETENTION_WARNING_BYTES = 1 << 30


def retention_warning(store: Store, control_store: Store, migration: str,
                      threshold_bytes: int = RETENTION_WARNING_BYTES) -> str | None:
    """A warning when capture on ``store`` holds back more log than ``threshold_bytes`` (a slot that does
    not move keeps every WAL segment after it until the disk fills), with what to do about it."""
    behind = lag_bytes(store, control_store, migration)
    if behind is None or behind <= threshold_bytes:
        return None
    if store.dialect is Dialect.POSTGRESQL:
        return (f"store {store.name!r}: the replication slot of migration {migration!r} holds back "
                f"{behind / 1e6:,.0f} MB of WAL; check that the relay runs, and set max_slot_wal_keep_size so "
                "that a stuck slot is invalidated before the disk fills (capture would then need a restart "
                "and a verification with repair)")
    return (f"store {store.name!r}: capture of migration {migration!r} is {behind / 1e6:,.0f} MB behind the end "
            "of the binlog; check that the relay runs, and that binlog_expire_logs_seconds outlasts the lag")
