"""The ``strict`` write strategy: the request succeeds only if both stores have the write (the seed's
"synchronous, fail if either fails").

Order, inside one unit of work (the authoritative transaction is still open throughout):

1. the rows are read **in the authoritative transaction** (the ``RETURNING`` image, or a read on its own
   connection, under the row locks it holds);
2. they are written to the other store **together with a note of their keys** (``dualwrite_strict_notes``,
   in the same transaction there; on PostgreSQL folded into the same statement, so it costs no round
   trip), which commits. The note exists exactly when the other store has the write, so it is the durable
   record of the window below. Because the authoritative row locks are held until step 3, two strict writers
   of one key reach the other store in the authoritative store's commit order: no version guard is needed
   (rule 1 of docs/architecture.md rests on the lock, not on a column). PostgreSQL has no lock on a row
   another transaction is inserting (a DELETE or UPDATE of it neither waits nor finds it), so there the keys
   are also locked with transaction advisory locks (``_strict_kv.PG_KEY_LOCKS``, one statement) before their
   rows are read, and deleted keys are read too: one round trip more per write;
3. the authoritative transaction commits;
4. the note is deleted off the request path, in batches.

A note older than ``strict_note_grace`` is a crash between steps 2 and 3 (or a failed clean-up): every
writer sweeps both stores now and then (:meth:`StrictStrategy.sweep`) and turns such notes into repair-queue
entries, and the repair drain makes the other store equal to the authoritative row (or absent) - the right
outcome whatever happened. Until then the verification the gates require finds the difference too.

Failures: the secondary write fails or times out -> the authoritative transaction rolls back and
:class:`StrictWriteError` names the secondary store (the keys also go to the repair queue, in case the
secondary committed before the error reached us); the authoritative commit fails after the secondary
committed -> the secondary is restored at once from the authoritative row with
:func:`dualwrite.mirror.mirror_keys` (else its note repairs it), and ``StrictWriteError`` names the
authoritative store.

What this does not give: between steps 2 and 3 (one commit round trip) a read of the other store sees the
new row before the authoritative store does; a compensated write was visible there for that long.

With a Redis new store the same contract holds with Redis's one atomic script in place of its transaction
(:mod:`dualwrite.adapter._strict_kv`: the notes live in Redis, and while Redis is authoritative the SQL
secondary's transaction is held open around the script).

The module is a capture method on its own (the later seam refactor lifts it into a plug-in): the writer
calls :meth:`StrictStrategy.commit` instead of committing.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dualwrite import bookkeeping as bk
from dualwrite import control, hooks, sqlgen
from dualwrite import rows as rowio
from dualwrite.adapter._commit_outcome import (
    MARKER_TABLE,
    CommitMarker,
    Outcome,
    outcome_of,
    take_marker,
    take_marker_async,
)
from dualwrite.adapter._errors import error_class, short_error
from dualwrite.adapter._strict_kv import PG_KEY_LOCKS, RedisStrict, key_json, lock_text
from dualwrite.adapter._tables import Key, TableRuntime, Touched
from dualwrite.adapter._timing import record_secondary
from dualwrite.adapter.phase import Side
from dualwrite.errors import StrictWriteError
from dualwrite.keys import encode_key
from dualwrite.mirror import mirror_keys, normal_key
from dualwrite.sqlgen import source_side, target_side
from dualwrite.store import Dialect, Store, without_row_values

if TYPE_CHECKING:
    from dualwrite.adapter.phase import Routing
    from dualwrite.adapter.writer import DualWriter

log = logging.getLogger("dualwrite.adapter")

NOTES = "dualwrite_strict_notes"
"""The keys of strict writes between their two commits, in the store that committed first (the secondary)."""


def notes_ddl(store: Store) -> list[str]:
    now = bk.now_sql(store)
    default = f"({now})" if store.dialect is Dialect.SQLITE else now
    return [
        f"CREATE TABLE IF NOT EXISTS {NOTES} (id {bk.identity_pk(store)}, migration VARCHAR(128) NOT NULL, "
        f"table_name VARCHAR(255) NOT NULL, key_json TEXT NOT NULL, token VARCHAR(32) NOT NULL, "
        f"created_at {bk.ts_type(store)} NOT NULL DEFAULT {default}){bk.table_suffix(store)}",
    ]  # no secondary index: the table holds only writes in flight and a second of finished ones


def ensure_notes(store: Store) -> None:
    """Create the notes table if missing (both stores: either can be the secondary)."""
    bk.create_all(store, notes_ddl(store))


@dataclass
class Ticket:
    """A strict write between its two commits: what to forget or to restore."""

    token: str
    groups: dict[str, tuple[TableRuntime, list[Key]]]
    a: Side
    b: Side
    marker: CommitMarker | None = None
    """Identifies the authoritative transaction after its connection is gone (:mod:`._commit_outcome`)."""
    reply_lost: bool = False
    """The authoritative commit raised, yet committed (:meth:`StrictStrategy.reply_lost`)."""
    settled: bool = False
    """A failed authoritative commit was already handled (:meth:`StrictStrategy.commit_failed`)."""


class StrictStrategy:
    """Commits strict units of work (secondary first, inside the open authoritative transaction)."""

    def __init__(self, writer: DualWriter, *, sweep_seconds: float = 10.0) -> None:
        self.writer = writer
        self.sweep_seconds = sweep_seconds
        self._next_sweep = 0.0
        self._done: list[tuple[Side, str]] = []
        self._sql: dict[tuple[str, str], tuple[str, list[Any]]] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.kv = RedisStrict(self) if writer.kv is not None else None
        """The Redis new store's half ([T2-6]): its notes, and the writes while Redis is authoritative."""

    # -- the protocol ------------------------------------------------------------------------------------

    def commit(self, route: Routing, touched: Sequence[Touched], dbapi_conn: Any, commit: Callable[[], None], *,
               txid: int | None = None) -> None:
        """Write the strict tables' keys of ``touched`` to the other store, then ``commit()`` the authoritative
        transaction (``dbapi_conn`` is its driver connection; ``txid`` its id if a statement returned it).
        Raises :class:`StrictWriteError`."""
        ticket = self.prepare(route, touched, dbapi_conn, taken=self.taken(route, txid))
        hooks.point("strict.between_commits")
        try:
            commit()
        except Exception as exc:
            if self.commit_stands(ticket, exc):
                return
            raise self.commit_failed(ticket, exc) from exc
        self.committed(ticket)

    def commit_stands(self, ticket: Ticket, exc: BaseException) -> bool:
        """The authoritative commit raised: did it commit all the same (its reply lost)? Then both stores
        have the write and the request succeeded: the note goes, nothing is restored, nothing is raised."""
        if not self.reply_lost(ticket, exc):
            return False
        self.committed(ticket)
        return True

    def reply_lost(self, ticket: Ticket, exc: BaseException) -> bool:
        """Only the question of :meth:`commit_stands` (the caller forgets the note once its commit is over)."""
        w = self.writer
        if outcome_of(w.data[ticket.a], ticket.marker, NOTES) is not Outcome.COMMITTED:
            return False
        log.warning("migration %s: the %s store's commit reported %s but committed: the strict write stands in "
                    "both stores", w.migration, ticket.a.value, error_class(exc))
        ticket.reply_lost = True
        return True

    def prepare(self, route: Routing, touched: Sequence[Touched], dbapi_conn: Any,
                rows: dict[str, list[Any]] | None = None, *, taken: tuple[str, CommitMarker | None] | None = None
                ) -> Ticket:
        """Steps 1 and 2: note the keys, write and commit them on the other store (the authoritative
        transaction stays open). The rows are read on ``dbapi_conn`` (the authoritative transaction's driver
        connection), and the commit marker taken there, unless ``rows`` has them already and ``taken`` the
        (token, marker) (the asyncio adapter: :meth:`read_async`, :meth:`marker_async`). Raises
        :class:`StrictWriteError`; then the caller must roll back."""
        w = self.writer
        a, b = route.authoritative, route.mirror_to
        assert b is not None
        groups = _groups(touched)
        nkeys = sum(len(keys) for _, keys in groups.values())
        if taken is None:
            token = uuid.uuid4().hex
            marker = self._marker(a, dbapi_conn, token)
        else:
            token, marker = taken
        started = time.perf_counter()
        try:
            self._write_secondary(groups, a, b, dbapi_conn, rows, touched, token)
        except Exception as exc:
            cls = error_class(exc)
            record_secondary(w.stats, b, nkeys, started, cls)
            # it may have committed before the error reached us: level it. A SQLite control store in the
            # authoritative file waits for the transaction still open here: hold the keys until it rolled back
            hold = w.data[a].dialect is Dialect.SQLITE and w.control.ref.url == w.data[a].ref.url
            for rt, keys in groups.values():
                if hold:
                    w.repairs.hold(rt.name, keys, reason=f"strict {cls}", authoritative=a.value)
                else:
                    w.enqueue_repair(rt.name, keys, reason=f"strict {cls}", authoritative=a.value)
            raise StrictWriteError(f"migration {w.migration}: strict write failed on the {b.value} store "
                                   f"(secondary, {cls}: {short_error(exc)}); the {a.value} store rolled back, "
                                   "nothing was written", store=b.value, role="secondary") from exc
        record_secondary(w.stats, b, nkeys, started)
        return Ticket(token, groups, a, b, marker)

    def taken(self, route: Routing, txid: int | None) -> tuple[str, CommitMarker | None] | None:
        """The (token, marker) for :meth:`prepare` when the authoritative statement already returned its
        transaction id (PostgreSQL ``RETURNING ..., txid_current()``); None: prepare fetches the marker."""
        if txid is None or self.writer.data[route.authoritative].dialect is not Dialect.POSTGRESQL:
            return None
        return uuid.uuid4().hex, CommitMarker(Dialect.POSTGRESQL, txid)

    def _marker(self, a: Side, dbapi_conn: Any, token: str) -> CommitMarker | None:
        """Step 0, in the authoritative transaction: what tells later whether its commit happened."""
        try:
            return take_marker(dbapi_conn, self.writer.data[a], NOTES, self.writer.migration, token)
        except Exception as exc:
            raise self._marker_failed(a, exc) from exc

    async def marker_async(self, route: Routing, conn: Any) -> tuple[str, CommitMarker | None]:
        """Step 0 on an SQLAlchemy ``AsyncConnection``: the (token, marker) for :meth:`prepare`."""
        a = route.authoritative
        token = uuid.uuid4().hex
        try:
            return token, await take_marker_async(conn, self.writer.data[a], NOTES, self.writer.migration, token)
        except Exception as exc:
            raise self._marker_failed(a, exc) from exc

    def _marker_failed(self, a: Side, exc: BaseException) -> StrictWriteError:
        return StrictWriteError(f"migration {self.writer.migration}: strict write failed on the {a.value} store "
                                f"(authoritative, {error_class(exc)}: {short_error(exc)}); nothing was written",
                                store=a.value, role="authoritative")

    def start(self) -> None:
        """Start the background clean-up and sweep (the writer calls it: a restarted process sweeps at once)."""
        with self._lock:
            self._start()

    def committed(self, ticket: Ticket) -> None:
        """Step 4: both stores have the write; the note goes (off the request path), and a marker row with it."""
        self._forget(ticket.b, ticket.token)
        if ticket.marker is not None and ticket.marker.dialect is Dialect.MYSQL:
            self._forget(ticket.a, ticket.token)

    def commit_failed(self, ticket: Ticket, exc: BaseException) -> StrictWriteError:
        """The authoritative commit failed after the other store committed: restore it; the error to raise."""
        ticket.settled = True
        restored = self._compensate(ticket.groups, ticket.a, ticket.b)
        if restored:
            self._forget(ticket.b, ticket.token)
        return StrictWriteError(
            f"migration {self.writer.migration}: strict write failed on the {ticket.a.value} store (authoritative "
            f"commit, {error_class(exc)}: {short_error(exc)}); the {ticket.b.value} store was "
            + ("restored" if restored else "queued for repair"), store=ticket.a.value, role="authoritative")

    async def read_async(self, route: Routing, touched: Sequence[Touched], conn: Any) -> dict[str, list[Any]]:
        """The rows of ``touched`` as the open transaction of an SQLAlchemy ``AsyncConnection`` sees them
        (for :meth:`prepare` on a thread: the event loop never waits for the other store)."""
        w = self.writer
        a = route.authoritative
        out: dict[str, list[Any]] = {}
        groups = _groups(touched)
        if w.data[a].dialect is Dialect.POSTGRESQL:  # the keys locked before their rows are read (see _plan)
            await conn.exec_driver_sql(PG_KEY_LOCKS.format(p=w.data[a].paramstyle), (self._lock_texts(groups),))
        for name, (rt, keys) in groups.items():
            mapping = rt.mapping_from(a)
            src = source_side(mapping, w.data[a])
            src_keys = [rowio.adapt_key(k, src.key_kinds, src.store.dialect) for k in keys]
            sql, params = sqlgen.select_keys_sql(mapping, src, src_keys, lock=False)
            res = await conn.exec_driver_sql(sql, tuple(params))
            out[name] = rowio.finish_rows(mapping, [tuple(r) for r in res.fetchall()])
        return out

    def _lock_texts(self, groups: dict[str, tuple[TableRuntime, list[Key]]],
                    touched: Sequence[Touched] = ()) -> list[str]:
        """The advisory lock names of the keys no row lock orders: every key, except those whose every write
        in this unit of work was an UPDATE that returned its row (a row all transactions see, locked by this
        one: a concurrent insert of it cannot exist, and its deleters and updaters wait for this commit)."""
        locked_by_row = {(t.table.name, normal_key(t.key)) for t in touched if t.row_locked}
        locked_by_row -= {(t.table.name, normal_key(t.key)) for t in touched if not t.row_locked}
        return [lock_text(self.writer.migration, rt.name, key_json(k)) for rt, keys in groups.values() for k in keys
                if (rt.name, k) not in locked_by_row]

    def _write_secondary(self, groups: dict[str, tuple[TableRuntime, list[Key]]], a: Side, b: Side,
                         dbapi_conn: Any, rows: dict[str, list[Any]] | None,
                         touched: Sequence[Touched], token: str) -> None:
        """The rows as the open authoritative transaction sees them -> the other store, one transaction.

        A row image the statement returned (``RETURNING``, taken inside this very transaction, under its
        row lock) is used as it is; other keys are read on the transaction's connection. One statement in
        all runs in autocommit (PostgreSQL): no separate COMMIT round trip."""
        w = self.writer
        target = w.data[b]
        plans = self._plan(groups, a, b, dbapi_conn, rows, touched)
        if self.kv is not None and b is Side.NEW:  # Redis: the rows and their note in one script
            self.kv.write_secondary(plans, a, token)
            return
        notes = [(w.migration, rt.name, json.dumps(encode_key(tuple(k))), token)
                 for rt, keys in groups.values() for k in keys]
        p = target.paramstyle
        one_note = f"({p}, {p}, {p}, {p})"
        statements = sum(bool(found) + bool(absent) for _, _, found, absent in plans)
        # PostgreSQL, one row written or deleted: the note rides in the same statement, autocommitted
        fold = target.dialect is Dialect.POSTGRESQL and statements == 1 and all(len(f) <= 1 for _, _, f, _ in plans)
        hooks.point("strict.before_secondary_write")
        with target.connect() as tconn:
            auto = _autocommit(tconn, target.dialect, fold)
            try:
                if not auto:
                    cur = tconn.cursor()
                    cur.executemany(f"INSERT INTO {NOTES} (migration, table_name, key_json, token) VALUES "
                                    f"{one_note}", notes)
                    cur.close()
                head = (f"WITH dw_n AS (INSERT INTO {NOTES} (migration, table_name, key_json, token) VALUES "
                        f"{', '.join([one_note] * len(notes))}) ") if auto else ""
                head_params = [v for n in notes for v in n] if auto else []
                for rt, dst, found, absent in plans:
                    self._apply(tconn, rt, a, dst, found, absent, head, head_params)
                if not auto:
                    tconn.commit()
            finally:
                if auto:
                    tconn.autocommit = False

    def _plan(self, groups: dict[str, tuple[TableRuntime, list[Key]]], a: Side, b: Side, dbapi_conn: Any,
              rows: dict[str, list[Any]] | None, touched: Sequence[Touched]
              ) -> list[tuple[TableRuntime, Any, list[Any], list[Key]]]:
        """Per table: (table, the other store's side of it, source rows to write, keys to delete there)."""
        w = self.writer
        last = {(t.table.name, normal_key(t.key)): t for t in touched}
        # PostgreSQL: the keys locked before their rows are read, and deleted keys read too (a delete of a row
        # another transaction was inserting deleted nothing: once that committed, the row is there)
        # (the asyncio adapter took the locks in read_async, which read every key, deleted ones too)
        locked = w.data[a].dialect is Dialect.POSTGRESQL
        texts = self._lock_texts(groups, touched) if locked and rows is None else []
        if texts:  # none for a unit of work of updates that returned their rows: no round trip then
            cur = dbapi_conn.cursor()
            try:
                cur.execute(PG_KEY_LOCKS.format(p=w.data[a].paramstyle), (texts,))
                cur.fetchall()
            finally:
                cur.close()
        plans: list[tuple[TableRuntime, Any, list[Any], list[Key]]] = []
        for rt, keys in groups.values():
            mapping = rt.mapping_from(a)
            src = source_side(mapping, w.data[a])
            dst = None if self.kv is not None and b is Side.NEW else target_side(mapping, w.data[b])
            fast = rt.fast[a]
            found: list[Any] = []
            absent: list[Key] = []
            unknown: list[Key] = []
            for k in keys:
                t = last.get((rt.name, k))
                if t is not None and t.deleted and not locked:
                    absent.append(k)
                elif t is not None and t.image is not None and fast is not None:
                    found.append(fast.row(t.image))
                else:
                    unknown.append(k)
            if unknown:
                if rows is not None:
                    read = rows[rt.name]
                else:
                    src_keys = [rowio.adapt_key(k, src.key_kinds, src.store.dialect) for k in unknown]
                    read = rowio.read_keys(dbapi_conn, mapping, src, src_keys)
                wanted = set(unknown)
                read = [r for r in read if normal_key(rowio.key_of(r, mapping.key_positions)) in wanted]
                present = {normal_key(rowio.key_of(r, mapping.key_positions)) for r in read}
                found += read
                absent += [k for k in unknown if k not in present]
            plans.append((rt, dst, found, absent))
        return plans

    def _apply(self, tconn: Any, rt: TableRuntime, a: Side, dst: Any, found: list[Any], absent: list[Key],
               head: str, head_params: list[Any]) -> None:
        """One table's rows and deletions on the other store's connection (``head``: the folded note)."""
        mapping = rt.mapping_from(a)
        target = dst.store
        try:
            if absent:
                keys = [rowio.adapt_key(k, dst.key_kinds, target.dialect) for k in absent]
                sql, params = sqlgen.delete_keys_sql(dst, keys)
                cur = tconn.cursor()
                cur.execute(head + sql, (*head_params, *params))
                cur.close()
            if len(found) == 1 and not absent:  # a plain execute (executemany pipelines: more waits)
                sql, adapters = self._upsert(rt, a, mapping, dst)
                cur = tconn.cursor()
                cur.execute(head + sql, (*head_params, *rowio.adapt(found, adapters)[0]))
                cur.close()
            elif found:
                rowio.write_rows(tconn, mapping, dst, found, insert_only=False, only_if_newer=False)
        except Exception as exc:
            clean = without_row_values(exc, f"strict write {mapping.source_table} -> {mapping.target_table}")
            if clean is exc:
                raise
            raise clean from None

    def _upsert(self, rt: TableRuntime, a: Side, mapping: Any, dst: Any) -> tuple[str, list[Any]]:
        """The unguarded upsert of one row into the other store, and the driver adapters (cached)."""
        cached = self._sql.get((rt.name, a.value))
        if cached is None:
            cached = self._sql[(rt.name, a.value)] = (
                sqlgen.upsert_sql(mapping, dst, only_if_newer=False, insert_only=False),
                rowio.adapters_for(mapping, dst.store.dialect))
        return cached

    def _compensate(self, groups: dict[str, tuple[TableRuntime, list[Key]]], a: Any, b: Any) -> bool:
        """After a failed authoritative commit: the other store follows the authoritative rows again."""
        w = self.writer
        try:
            for rt, keys in groups.values():
                w.retry_stale(functools.partial(mirror_keys, w.data[a], w.data[b], rt.mapping_from(a), keys), a, b)
            return True
        except Exception as exc:  # noqa: BLE001 - the note stays in the repair queue
            log.warning("migration %s: cannot restore the %s store after a failed strict commit (%s); the keys "
                        "are repaired from the repair queue", w.migration, b.value, error_class(exc))
            return False

    # -- deleting the notes of finished writes, off the request path -------------------------------------

    def _forget(self, side: Side, token: str) -> None:
        with self._lock:
            self._done.append((side, token))
            many = len(self._done) >= 200
            self._start()
        if many:
            self._wake.set()

    def _start(self) -> None:
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="dualwrite-strict-notes", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)  # batched: one DELETE per second (or per 200 writes), not one per write
            self._wake.clear()
            self.flush()
            if time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + self.sweep_seconds
                try:
                    self.sweep()
                except Exception as exc:  # noqa: BLE001 - next time
                    log.warning("migration %s: cannot sweep strict notes (%s)", self.writer.migration,
                                error_class(exc))

    def flush(self) -> int:
        """Delete the notes of finished strict writes; returns how many were cleared (a concurrent flush is
        waited for, so after it returns every note of a write finished before the call is gone)."""
        with self._flush_lock:
            with self._lock:
                done, self._done = self._done, []
            by_side: dict[Side, list[str]] = {}
            for side, token in done:
                by_side.setdefault(side, []).append(token)
            # a Redis note goes before the SQL note row of the same write (RedisStrict.sweep reads that row)
            for side, tokens in sorted(by_side.items(), key=lambda item: item[0] is not self._redis_side):
                if side is self._redis_side:
                    assert self.kv is not None
                    try:
                        self.kv.forget(tokens)
                    except Exception as exc:  # noqa: BLE001 - a note left behind is swept and settled
                        log.warning("migration %s: cannot clear %d strict note(s) in Redis (%s)",
                                    self.writer.migration, len(tokens), error_class(exc))
                        by_side.pop(Side.OLD, None)  # keep their SQL note rows: the sweep needs them
                        break
                    continue
                store = self.writer.data[side]
                p = store.paramstyle
                try:
                    for start in range(0, len(tokens), 200):
                        part = tokens[start:start + 200]
                        bk.execute(store, f"DELETE FROM {NOTES} WHERE token IN ({', '.join([p] * len(part))})", part)
                except Exception as exc:  # noqa: BLE001 - a note left behind is one harmless repair
                    log.warning("migration %s: cannot clear %d strict note(s) (%s); they will be repaired instead",
                                self.writer.migration, len(tokens), error_class(exc))
            return len(done)

    def sweep(self, older_than: float | None = None) -> int:
        """Turn notes older than the grace period (a crash between the two commits) into repair-queue
        entries, on both stores; returns how many. Safe to run from every instance at once."""
        w = self.writer
        grace = w.options.strict_note_grace if older_than is None else older_than
        moved = 0
        if self.kv is not None:  # Redis first: its sweep reads the SQL note rows the SQL sweep deletes
            moved += self.kv.sweep(grace)
        for side in (Side.OLD, Side.NEW):
            if side is self._redis_side:
                continue
            store = w.data[side]
            p = store.paramstyle
            before, param = bk.now_plus(store, -grace)
            try:
                found = bk.query(store, f"SELECT id, table_name, key_json, token FROM {NOTES} WHERE migration = {p} "
                                        f"AND created_at <= {before} AND table_name <> '{MARKER_TABLE}' "
                                        "ORDER BY id LIMIT 1000",
                                 [w.migration, param])
                # markers of committed writes whose clean-up failed: nothing to repair, only to delete
                bk.execute(store, f"DELETE FROM {NOTES} WHERE migration = {p} AND created_at <= {before} AND "
                                  f"table_name = '{MARKER_TABLE}'", [w.migration, param])
            except Exception as exc:  # noqa: BLE001 - no notes table there (yet): nothing to sweep
                log.debug("no strict notes on the %s store: %s", side.value, error_class(exc))
                continue
            if self.kv is not None and found:  # a write whose Redis note is still there is the Redis sweep's
                pending = self.kv.noted([str(tok) for *_, tok in found])
                found = [f for f in found if str(f[3]) not in pending]
            if not found:
                continue
            self.queue_repairs([(str(t), str(k), side.other.value) for _, t, k, _ in found],
                               "strict: interrupted between the commits")
            ids = [int(i) for i, *_ in found]
            bk.execute(store, f"DELETE FROM {NOTES} WHERE id IN ({', '.join([p] * len(ids))})", ids)
            moved += len(ids)
            log.warning("migration %s: %d strict write(s) interrupted between their commits; queued for repair",
                        w.migration, len(ids))
        return moved

    def queue_repairs(self, entries: Sequence[tuple[str, str, str]], reason: str) -> None:
        """Durably queue (table, key JSON, authoritative side) entries for the repair drain, one transaction."""
        if not entries:
            return
        w = self.writer
        c = w.control.paramstyle
        with w.control.connect() as conn:
            cur = conn.cursor()
            cur.executemany(f"INSERT INTO {control.REPAIR_QUEUE} (migration, table_name, key_json, reason, "
                            f"authoritative, attempts) VALUES ({c}, {c}, {c}, {c}, {c}, 0)",
                            [(w.migration, t, k, reason, a) for t, k, a in entries])
            cur.close()
            conn.commit()

    @property
    def _redis_side(self) -> Side | None:
        return Side.NEW if self.kv is not None else None

    def forget_pair(self, token: str) -> None:
        """A strict write while Redis is authoritative is over: its Redis note, then its SQL note row, go."""
        self._forget(Side.NEW, token)
        self._forget(Side.OLD, token)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()


def _groups(touched: Sequence[Touched]) -> dict[str, tuple[TableRuntime, list[Key]]]:
    groups: dict[str, tuple[TableRuntime, list[Key]]] = {}
    for t in touched:
        groups.setdefault(t.table.name, (t.table, []))[1].append(normal_key(t.key))
    return {n: (rt, list(dict.fromkeys(keys))) for n, (rt, keys) in groups.items()}


def strict_groups(touched: Sequence[Touched]) -> list[Touched]:
    """The touched keys of tables whose capture method writes the other store before the commit (strict)."""
    return [t for t in touched if t.table.method.writes_before_commit]


def _autocommit(conn: Any, dialect: Dialect, single: bool) -> bool:
    if dialect is Dialect.POSTGRESQL and single:
        try:
            conn.autocommit = True  # one statement: no separate COMMIT round trip
            return True
        except Exception:  # noqa: BLE001 - the driver refused: commit in a second round trip
            return False
    return False

