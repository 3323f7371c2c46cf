"""``strict`` with a Redis new store ([T2-6]): the same contract as between SQL stores
(:mod:`dualwrite.adapter.strict`), with Redis's one atomic script standing in for its transaction.

The rule both directions keep: **the store that commits first is written with a durable note of the keys,
and the transaction of the other stays open (holding its row locks) until that write is done.** A crash
between the two commits leaves a note; a sweep (:meth:`RedisStrict.sweep`, run by
:meth:`StrictStrategy.sweep`) finds it after ``strict_note_grace`` and puts things right.

SQL authoritative (before CUTOVER_WRITES): the SQL transaction is open (its row locks order two writers of a
key, so Redis gets them in SQL's commit order); Redis is written with the note (``a = old``) by one script
(:mod:`dualwrite.keyvalue.strict_notes`); SQL commits. Redis fails or times out -> SQL rolls back, the keys
are queued for repair (the script may have run after all), the error names Redis. The SQL commit fails ->
Redis is restored from the SQL row (re-read; deleted if absent) by the usual mirror, the error names SQL.
Crash between -> the note is swept into the repair queue: Redis follows SQL, the write is in neither.

Redis authoritative (from CUTOVER_WRITES): the SQL *secondary's* transaction is opened and writes the row and
a note of the token (``dualwrite_strict_notes``; the row lock it takes orders two writers of a key, in SQL
and in Redis alike; on PostgreSQL a transaction lock on the key too, as an absent row locks nothing there);
Redis is written with its note (``a = new``, with each key's **before image**, read by the script); SQL
commits. Which store is the truth for undoing? Redis is authoritative, so undoing a write
there must never come from SQL (repairs flow into the non-authoritative store only): it comes from Redis's
own before image in the note, and only while the key still holds the image this write put there (a later
write is never undone). So: SQL fails before Redis is written -> SQL rolls back, nothing anywhere. Redis
fails or times out -> if its note is there the script ran (reply lost) and SQL commits; else SQL rolls back
(the script's deadline keeps a held script from landing later). The SQL commit fails -> unless its note row
is there (the commit happened, reply lost), Redis is put back from the before image, the error names SQL.
Crash between -> the sweep finds the Redis note: if SQL's note row exists SQL committed and the write stands;
otherwise Redis is put back from the before image and the key queued for repair (SQL follows Redis). The
success path clears the Redis note before the SQL note row, and the SQL notes' sweep skips tokens whose
Redis note is still there, so a committed write is never taken for an uncommitted one.

What this costs: one script round trip more than ``sync`` (the note rides in it); SQL's row locks are held
across the Redis round trip. What it does not give: a read of the store written first sees the row one
round trip before the other commits; a compensated update was visible that long, and an update of the
same key that read it in that window keeps the columns it merged from it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, cast

from dualwrite import hooks, sqlgen
from dualwrite import rows as rowio
from dualwrite.adapter._errors import error_class, short_error
from dualwrite.adapter._tables import Key, TableRuntime
from dualwrite.adapter._timing import record_secondary
from dualwrite.adapter.phase import Side
from dualwrite.errors import DualwriteError, StrictWriteError
from dualwrite.keys import encode_key
from dualwrite.keyvalue import strict_notes
from dualwrite.sqlgen import target_side
from dualwrite.store import Dialect, without_row_values
from dualwrite.stores import Role, kind_for, normal_key

if TYPE_CHECKING:
    from dualwrite.adapter.strict import StrictStrategy
    from dualwrite.stores.redis import RedisStore
    from dualwrite.stores.redis._table import RedisTable

log = logging.getLogger("dualwrite.adapter")

__all__ = ["RedisStrict"]


def key_json(key: Key) -> str:
    """A key as the strict notes and the repair queue write it."""
    return json.dumps(encode_key(tuple(key)))


def lock_text(migration: str, table: str, key: str) -> str:
    """What a PostgreSQL transaction lock of a strict write's key is taken on (``key``: its key JSON)."""
    return json.dumps([migration, table, key])


PG_KEY_LOCKS = ("SELECT count(pg_advisory_xact_lock(h)) FROM (SELECT DISTINCT hashtextextended(k, 0) AS h "
                "FROM unnest({p}::text[]) AS k ORDER BY 1) AS dw_key_locks")
"""Transaction locks on keys, in one order (two writers of several keys never wait for each other in a cycle).
A row lock orders two strict writers of a key, but PostgreSQL has none for a row another transaction is
inserting: a DELETE or UPDATE of it neither waits nor finds it, and its strict write would reach the other
store before the insert's commit while committing after it."""


class RedisStrict:
    """The Redis half of a :class:`~dualwrite.adapter.strict.StrictStrategy` (a Redis new store)."""

    def __init__(self, strategy: StrictStrategy) -> None:
        self.strategy = strategy
        self.writer = strategy.writer

    def _store(self) -> RedisStore:
        """The adapter's Redis store (its secondary-path copy, with the secondary timeouts)."""
        return cast("RedisStore", self.writer.data[Side.NEW])

    def _client(self) -> Any:
        return self._store().client()

    @staticmethod
    def _table(store: Any, mapping: Any) -> RedisTable:
        return cast("RedisTable", kind_for(store).table(store, mapping, Role.TARGET))

    def _timeout(self, store: Any) -> float:
        return float(store.timeouts()[0])

    # -- SQL authoritative: Redis written inside the open SQL transaction -----------------------------------

    def write_secondary(self, plans: list[tuple[TableRuntime, Any, list[Any], list[Key]]], a: Side,
                        token: str) -> None:
        """The rows of ``plans`` (per table: rows in the mapping's target order, keys to delete) and the note
        into Redis, one script. Raises on any failure (the caller rolls SQL back and names Redis)."""
        w = self.writer
        store = self._store()
        rows: list[tuple[str, str, strict_notes.StrictOp]] = []
        for rt, _dst, found, absent in plans:
            table = self._table(store, rt.mapping_from(a))
            for row in found:
                rows.append((rt.name, key_json(table.row_key(row)), table.strict_op(table.row_key(row), row)))
            for k in absent:
                rows.append((rt.name, key_json(k), table.strict_op(k, None)))
        if not rows:
            return
        hooks.point("strict.before_secondary_write")
        client = store.client()
        try:
            strict_notes.write(client, w.migration, token, a.value, rows, self._timeout(store))
        except Exception as exc:
            clean = without_row_values(exc, "strict write into Redis")
            if clean is exc:
                raise
            raise clean from None
        finally:
            client.close()

    # -- Redis authoritative: the SQL secondary's transaction held open around the Redis script --------------

    def guard(self, exc: BaseException) -> BaseException:
        """An error of a strict write while Redis is authoritative, as the application sees it: Redis's own
        failures (reading the row before an update, the script) name Redis."""
        if isinstance(exc, DualwriteError):
            return exc
        return StrictWriteError(f"migration {self.writer.migration}: strict write failed on the new store "
                                f"(authoritative, {error_class(exc)}: {short_error(exc)}); the old store rolled "
                                "back, nothing was written", store=Side.NEW.value, role="authoritative")

    def put(self, rt: TableRuntime, key: Key, row: tuple[Any, ...] | None, insert_only: bool) -> int:
        """Write one row (``row`` in the Redis table's column order; None deletes) into Redis and the SQL old
        store, both or neither. Returns 1 (written, or the deleted key existed) or 0 (an insert found its key
        taken, or the deleted key was absent). Raises :class:`StrictWriteError` naming the store that failed."""
        w = self.writer
        kv = w.kv
        assert kv is not None
        token = uuid.uuid4().hex
        key = normal_key(tuple(key))
        op = self._table(kv.store, rt.forward).strict_op(key, row, insert_only=insert_only)
        sql = w.data[Side.OLD]
        mapping = rt.mapping_from(Side.NEW)
        started = time.perf_counter()
        with sql.connect() as tconn:
            try:
                self._write_sql(tconn, rt, mapping, key, row, token)
            except Exception as exc:
                cls = error_class(exc)
                record_secondary(w.stats, Side.OLD, 1, started, cls)
                raise StrictWriteError(
                    f"migration {w.migration}: strict write failed on the old store (secondary, {cls}: "
                    f"{short_error(exc)}); nothing was written", store=Side.OLD.value, role="secondary") from exc
            existed = self._write_redis(rt, key, op, token, tconn)
            if existed is None:  # an insert found its key taken: nothing written anywhere
                tconn.rollback()
                return 0
            hooks.point("strict.between_commits")
            try:
                tconn.commit()
            except Exception as exc:
                record_secondary(w.stats, Side.OLD, 1, started, error_class(exc))
                if not self._sql_committed(token):
                    raise self._undo(rt, key, op, token, exc) from exc
        record_secondary(w.stats, Side.OLD, 1, started)
        self.strategy.forget_pair(token)
        return int(existed[0]) if row is None else 1

    def _write_sql(self, tconn: Any, rt: TableRuntime, mapping: Any, key: Key, row: tuple[Any, ...] | None,
                   token: str) -> None:
        from dualwrite.adapter._keyvalue import row_as_source  # noqa: PLC0415 - the adapter's own mapping helper
        from dualwrite.adapter.strict import NOTES  # noqa: PLC0415 - one notes table for both strict paths

        w = self.writer
        dst = target_side(mapping, w.data[Side.OLD])
        dialect = dst.store.dialect
        p = dst.store.paramstyle
        note = (w.migration, rt.name, key_json(key), token)
        cur = tconn.cursor()
        try:
            if dialect is Dialect.POSTGRESQL:
                # a key absent here takes no row lock (no gap locks, unlike InnoDB; SQLite locks the file), so a
                # delete of a key being inserted would not wait for the insert's commit and Redis would get the
                # two in the other order: a transaction-scoped lock on the key, taken in the note's statement
                cur.execute(f"INSERT INTO {NOTES} (migration, table_name, key_json, token) SELECT {p}, {p}, {p}, {p} "
                            f"FROM (SELECT pg_advisory_xact_lock(hashtextextended({p}, 0))) AS dw_key_lock",
                            (*note, lock_text(*note[:3])))
            else:
                cur.execute(f"INSERT INTO {NOTES} (migration, table_name, key_json, token) VALUES ({p}, {p}, {p}, "
                            f"{p})", note)
            if row is None:
                sql, params = sqlgen.delete_keys_sql(dst, [rowio.adapt_key(key, dst.key_kinds, dialect)])
                cur.execute(sql, tuple(params))
            else:
                sql_row = row_as_source(rt, row)
                upsert = sqlgen.upsert_sql(mapping, dst, only_if_newer=False, insert_only=False)
                cur.execute(upsert, tuple(rowio.adapt([sql_row], rowio.adapters_for(mapping, dialect))[0]))
        except Exception as exc:
            clean = without_row_values(exc, f"strict write {mapping.source_table} -> {mapping.target_table}")
            if clean is exc:
                raise
            raise clean from None
        finally:
            cur.close()

    def _write_redis(self, rt: TableRuntime, key: Key, op: strict_notes.StrictOp, token: str,
                     tconn: Any) -> list[bool] | None:
        """The Redis script; on failure SQL rolls back unless the script ran after all (its note is there)."""
        w = self.writer
        kv = w.kv
        assert kv is not None
        client = kv.store.client()
        try:
            try:
                return strict_notes.write(client, w.migration, token, Side.NEW.value,
                                          [(rt.name, key_json(key), op)], self._timeout(kv.store))
            except Exception as exc:
                note = self._note_if_landed(token)
                if note is not None:
                    log.warning("migration %s: Redis reported %s but ran the strict write: it stands", w.migration,
                                error_class(exc))
                    return [b is not False for b in note.get("b", [])] or [True]
                tconn.rollback()
                raise self.guard(exc) from exc
        finally:
            client.close()

    def _note_if_landed(self, token: str) -> dict[str, Any] | None:
        """The note of ``token`` if Redis has the write (asked on a fresh connection); None if not or unknown."""
        kv = self.writer.kv
        assert kv is not None
        client = kv.store.client(timeout=min(1.0, self._timeout(kv.store)))
        try:
            return strict_notes.read_note(client, self.writer.migration, token)
        except Exception:  # noqa: BLE001 - unknown: the SQL side rolls back, the sweep settles the rest
            return None
        finally:
            client.close()

    def _sql_committed(self, token: str) -> bool:
        """Did the SQL secondary commit although its COMMIT raised (its note row is there)?"""
        from dualwrite.adapter.strict import NOTES  # noqa: PLC0415

        sql = self.writer.data[Side.OLD]
        try:
            with sql.connect() as conn:
                cur = conn.cursor()
                cur.execute(f"SELECT 1 FROM {NOTES} WHERE token = {sql.paramstyle}", (token,))
                found = cur.fetchone() is not None
                cur.close()
                conn.rollback()
            return found
        except Exception:  # noqa: BLE001 - unknown: undo Redis; the SQL note (if any) is swept into a repair
            return False

    def _undo(self, rt: TableRuntime, key: Key, op: strict_notes.StrictOp, token: str,
              exc: BaseException) -> StrictWriteError:
        """The SQL commit failed after Redis was written: Redis back to its before image (the note's)."""
        w = self.writer
        restored = False
        client = self._client()
        try:
            note = strict_notes.read_note(client, w.migration, token)
            if note is not None:
                self._restore(client, note)
                strict_notes.forget(client, w.migration, [token])
                restored = True
        except Exception as err:  # noqa: BLE001 - the note stays; the sweep restores it
            log.warning("migration %s: cannot restore Redis after a failed strict commit (%s); the sweep will",
                        w.migration, error_class(err))
        finally:
            client.close()
        w.enqueue_repair(rt.name, [key], reason=f"strict {error_class(exc)}", authoritative=Side.NEW.value)
        return StrictWriteError(
            f"migration {w.migration}: strict write failed on the old store (secondary commit, {error_class(exc)}: "
            f"{short_error(exc)}); the new store was " + ("restored" if restored else "queued for repair"),
            store=Side.OLD.value, role="secondary")

    def _restore(self, client: Any, note: dict[str, Any]) -> None:
        for (_table, _key, redis_key), before, after in zip(note.get("k", []), note.get("b", []), note.get("w", []),
                                                             strict=False):
            strict_notes.restore(client, redis_key, before, after)

    # -- notes: clean-up and sweep ----------------------------------------------------------------------------

    def forget(self, tokens: list[str]) -> None:
        client = self._client()
        try:
            strict_notes.forget(client, self.writer.migration, tokens)
        finally:
            client.close()

    def noted(self, tokens: list[str]) -> set[str]:
        """The tokens of ``tokens`` whose Redis note is still there (raises when Redis cannot say)."""
        if not tokens:
            return set()
        client = self._client()
        try:
            found = client.hmget(strict_notes.notes_keys(self.writer.migration)[1], tokens)
        finally:
            client.close()
        return {t for t, raw in zip(tokens, found, strict=True) if raw is not None}

    def sweep(self, grace: float) -> int:
        """Notes older than ``grace``: a crash between the two commits (or a clean-up that never ran). With
        SQL authoritative the keys are queued for repair (Redis follows SQL). With Redis authoritative: if the
        SQL note row exists SQL committed and the write stands; else Redis is put back from the before image
        first. Returns how many notes were settled."""
        w = self.writer
        client = self._client()
        try:
            notes = strict_notes.due(client, w.migration, grace)
            if not notes:
                return 0
            committed = self._sql_tokens([t for t, n in notes if n.get("a") == Side.NEW.value])
            queue: list[tuple[str, str, str]] = []
            for token, note in notes:
                side = str(note.get("a") or Side.OLD.value)
                if side == Side.NEW.value and token in committed:
                    continue  # both committed: only the clean-up was lost
                if side == Side.NEW.value:
                    self._restore(client, note)
                queue += [(str(t), str(k), side) for t, k, _ in note.get("k", [])]
            self.strategy.queue_repairs(queue, "strict: interrupted between the commits")
            strict_notes.forget(client, w.migration, [t for t, _ in notes])
        finally:
            client.close()
        if queue:
            log.warning("migration %s: %d strict write(s) to Redis interrupted between their commits; queued "
                        "for repair", w.migration, len(queue))
        return len(notes)

    def _sql_tokens(self, tokens: list[str]) -> set[str]:
        from dualwrite.adapter.strict import NOTES  # noqa: PLC0415

        if not tokens:
            return set()
        sql = self.writer.data[Side.OLD]
        p = sql.paramstyle
        with sql.connect() as conn:
            cur = conn.cursor()
            cur.execute(f"SELECT token FROM {NOTES} WHERE token IN ({', '.join([p] * len(tokens))})", tuple(tokens))
            found = {str(r[0]) for r in cur.fetchall()}
            cur.close()
            conn.rollback()
        return found
