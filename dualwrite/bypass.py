"""Runtime bypass detection: writes to the authoritative store's migrated tables that did not come through the
adapter (strategies ``sync`` and ``outbox``, any strategy whose writes go through the adapter).

The static ``dualwrite audit`` reads source; this half watches the database, because a forgotten raw UPDATE in
a cron job or a second service is silent drift with an adapter strategy (nothing else mirrors it) and, after
write cutover, a lost write. How it tells the writers apart:

- the adapter marks its transactions: its own engines at connect time (PostgreSQL ``-c dualwrite.adapter=on``
  in the startup options, free; MariaDB ``SET @dualwrite_adapter = 1`` as the connection's init command), and
  the application's engine, which its raw paths share, per transaction at the first routed write
  (:func:`mark_transaction`: on PostgreSQL the transaction's statements carry a comment the trigger finds in
  ``current_query()``, until commit or rollback; on MariaDB a session variable, reset when the connection
  goes back to the pool);
- the worker's own writes (backfill, relay, repair) carry ``dualwrite.replica`` (:func:`triggers.mark_replica`);
- a row-level AFTER trigger on each migrated table of the authoritative store (a PostgreSQL ``WHEN`` clause,
  so marked writes do not even call the trigger function) records every other write in ``dualwrite_bypass``:
  migration, table, key and the writer's identity as the database knows it (PostgreSQL: application_name,
  session_user, inet_client_addr(); MariaDB: USER(), CONNECTION_ID()).

:func:`collect` reads and deletes those rows, queues their keys for repair (so the stores converge anyway) and
returns counts per (table, writer): no key ever leaves this module. The workflow also collects under every
write fence, before the repair drain, so no bypassed write is left uncollected when authority moves.

After write cutover a raw write to the old store would be lost (nothing carries it to the new store under an
adapter strategy): :func:`refuse_old` makes the old store's migrated tables refuse every write that is neither
the adapter's nor dualwrite's own (the denied-writes triggers of :mod:`dualwrite.triggers`, letting marked
transactions pass), with an error that names the migration and says to write through the adapter.

SQLite is not covered (no session state a trigger can read); per-tenant authority is not covered (the
authoritative store differs per tenant).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from dualwrite import bookkeeping as bk
from dualwrite import control, triggers
from dualwrite.capture import method_for
from dualwrite.keys import decode_key
from dualwrite.spec import MigrationSpec
from dualwrite.store import Dialect, Kind, Store
from dualwrite.triggers import ADAPTER_COMMENT, ADAPTER_SETTING, ADAPTER_VARIABLE, _lit, _my_key_json, _pg_key_json

BYPASS = "dualwrite_bypass"
#: the PostgreSQL setting / MariaDB variable that marks an adapter transaction
PG_SETTING = ADAPTER_SETTING
MY_VARIABLE = ADAPTER_VARIABLE
MY_MARK_SQL = "SET @dualwrite_adapter = 1"
MY_UNMARK_SQL = "SET @dualwrite_adapter = NULL"
_MARKED = "dualwrite_adapter_marked"
#: keys read and queued for repair per collection (the rest wait for the next one)
COLLECT_LIMIT = 5000


#: phases in which no capture is installed any more (the old store is retired): nothing is marked there
UNMARKED_PHASES = frozenset({"CLEANUP", "DONE"})


def marks(phase: str) -> bool:
    """Does the adapter mark its transactions in ``phase``? In every phase capture may be installed in,
    PREPARE included (capture is removed only after a rollback to PREPARE is published, and instances that
    see PREPARE first must not look like bypassing writers meanwhile); not in CLEANUP and DONE."""
    return phase not in UNMARKED_PHASES


def adapter_marks(spec: MigrationSpec) -> bool:
    """Does the adapter mark its transactions for this migration? For every capture method that is not
    ``database_capture`` (those capture every writer in the database: nothing there bypasses anything),
    per-tenant migrations included (cheap, and harmless where no capture is installed)."""
    return not method_for(spec.strategy).database_capture


def applies(spec: MigrationSpec) -> bool:
    """Bypass capture runs for capture methods whose writes go through the adapter (not ``database_capture``
    ones, triggers or cdc, which capture every writer anyway), when one store is authoritative for the whole
    migration."""
    return adapter_marks(spec) and not spec.tenant_tables


# ---------------------------------------------------------------------------------------------------------
# marking the adapter's transactions


def connect_options(dialect: Dialect, cparams: dict[str, Any]) -> None:
    """Mark every connection of an engine the adapter owns (its secondary / shadow pools) at connect time."""
    if dialect is Dialect.POSTGRESQL:
        opts = str(cparams.get("options", ""))
        if PG_SETTING not in opts:
            cparams["options"] = f"{opts} -c {PG_SETTING}=on".strip()
    elif dialect is Dialect.MYSQL:
        init = cparams.get("init_command")
        cparams["init_command"] = f"{init}; {MY_MARK_SQL}" if init else MY_MARK_SQL


_listening: set[int] = set()
_listening_lock = threading.Lock()


def _reset_on_checkin(dbapi_conn: Any, record: Any) -> None:
    """Pool check-in: the connection leaves the adapter's transaction (MariaDB: reset the session variable)."""
    if record is None:
        return
    marked = record.info.pop(_MARKED, None)
    if marked == "mysql" and dbapi_conn is not None:
        cur = dbapi_conn.cursor()
        try:
            cur.execute(MY_UNMARK_SQL)
        finally:
            cur.close()


def _comment(conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> Any:
    """PostgreSQL: statements of a marked transaction carry the adapter's comment, which the capture
    trigger's ``WHEN`` clause finds in ``current_query()``: no extra round trip per transaction."""
    if conn.info.get(_MARKED) == "postgresql":
        return ADAPTER_COMMENT + statement, parameters
    return statement, parameters


def _unmark(conn: Any) -> None:
    """Commit / rollback: the transaction's mark ends. Not on an invalidated connection (its ``info`` is gone
    with the DBAPI connection, and raising here would mask the error that invalidated it); pool check-in
    drops the mark with the record."""
    if getattr(conn, "invalidated", False):
        return
    if conn.info.get(_MARKED) == "postgresql":
        del conn.info[_MARKED]


def _listen(engine: Any, dialect: Dialect) -> None:
    if engine is None or id(engine) in _listening:
        return
    with _listening_lock:
        if id(engine) in _listening:
            return
        sa.event.listen(engine, "checkin", _reset_on_checkin)
        if dialect is Dialect.POSTGRESQL:
            sa.event.listen(engine, "before_cursor_execute", _comment, retval=True)
            sa.event.listen(engine, "commit", _unmark)
            sa.event.listen(engine, "rollback", _unmark)
        _listening.add(id(engine))


def mark_transaction(conn: Any, dialect: Dialect | None = None) -> None:
    """Mark the transaction open on ``conn`` (a SQLAlchemy Connection of the application's engine) as the
    adapter's, until it commits or rolls back.

    PostgreSQL: every statement of the transaction carries the comment :data:`ADAPTER_COMMENT` (a
    ``before_cursor_execute`` hook on the engine), and the capture trigger skips statements that carry it;
    the mark ends with the transaction (commit / rollback events, and pool check-in as a safety net).
    Measured against ``set_config('dualwrite.adapter', 'on', true)`` per transaction, which costs a round
    trip. MariaDB: ``SET @dualwrite_adapter = 1``, reset when the connection is checked back into the pool
    (the ORM path gives its connection back at commit / rollback; the Core unit of work when its ``with``
    block ends)."""
    info = conn.info
    name = conn.dialect.name  # the connection decides (``dialect`` is only the caller's expectation)
    actual = Dialect.POSTGRESQL if name == "postgresql" else Dialect.MYSQL if name in ("mysql", "mariadb") else None
    if actual is Dialect.POSTGRESQL:
        if info.get(_MARKED) != "postgresql":
            _listen(getattr(conn, "engine", None), actual)
            info[_MARKED] = "postgresql"
    elif actual is Dialect.MYSQL and info.get(_MARKED) != "mysql":
        _listen(getattr(conn, "engine", None), actual)
        conn.exec_driver_sql(MY_MARK_SQL)
        info[_MARKED] = "mysql"


# ---------------------------------------------------------------------------------------------------------
# capture triggers


def _names(migration: str, table: str) -> tuple[str, str]:
    digest = hashlib.blake2s(f"{migration}\0{table}\0bypass".encode(), digest_size=4).hexdigest()
    base = "".join(ch if ch.isalnum() else "_" for ch in table.rsplit(".", 1)[-1])[:24]
    return f"dw_byp_{base}_{digest}", f"dw_bypfn_{base}_{digest}"


def _ddl(store: Store) -> list[str]:
    now = bk.now_sql(store)
    return [
        f"CREATE TABLE IF NOT EXISTS {BYPASS} (id {bk.identity_pk(store)}, migration VARCHAR(128) NOT NULL, "
        f"table_name VARCHAR(255) NOT NULL, key_json TEXT NOT NULL, writer VARCHAR(512) NOT NULL, "
        f"created_at {bk.ts_type(store)} NOT NULL DEFAULT {now}){bk.table_suffix(store)}",
        f"CREATE INDEX IF NOT EXISTS {BYPASS}_mig ON {BYPASS} (migration, id)",
    ]


def _key_cols(store: Store, table: str, key: Sequence[str]) -> list[tuple[str, Kind]]:
    info = store.describe(table)
    return [(k, info.columns[k].kind) for k in key]


PG_WRITER = ("'app=' || coalesce(nullif(current_setting('application_name', true), ''), '?') || ' user=' || "
             "session_user || ' client=' || coalesce(host(inet_client_addr()), 'local')")
MY_WRITER = "CONCAT('user=', USER(), ' connection=', CONNECTION_ID())"


def capture_sql(store: Store, migration: str, label: str, table: str, key: Sequence[str]) -> list[str]:
    """The statements that (re)install bypass capture on ``table`` (recorded under the spec's name ``label``)."""
    cols = _key_cols(store, table, key)
    trig, fn = _names(migration, table)
    qt = store.quote(table)
    head = f"INSERT INTO {BYPASS} (migration, table_name, key_json, writer) VALUES ({_lit(migration)}, {_lit(label)}, "
    if store.dialect is Dialect.POSTGRESQL:
        moved = " OR ".join(f"OLD.{store.quote(n)} IS DISTINCT FROM NEW.{store.quote(n)}" for n, _ in cols)
        when = (f"coalesce(current_setting('{PG_SETTING}', true), '') <> 'on' "
                "AND coalesce(current_setting('dualwrite.replica', true), '') <> 'on' "
                f"AND strpos(current_query(), {_lit(ADAPTER_COMMENT.strip())}) = 0")
        return [
            f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $dw$\n"
            "BEGIN\n"
            f"  IF TG_OP <> 'INSERT' THEN {head}{_pg_key_json('OLD', store, cols)}, {PG_WRITER}); END IF;\n"
            f"  IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND ({moved})) THEN "
            f"{head}{_pg_key_json('NEW', store, cols)}, {PG_WRITER}); END IF;\n"
            "  RETURN NULL;\n"
            "END $dw$",
            f"DROP TRIGGER IF EXISTS {trig} ON {qt}",
            f"CREATE TRIGGER {trig} AFTER INSERT OR UPDATE OR DELETE ON {qt} FOR EACH ROW WHEN ({when}) "
            f"EXECUTE FUNCTION {fn}()",
        ]
    if store.dialect is Dialect.MYSQL:
        moved = " OR ".join(f"NOT (OLD.{store.quote(n)} <=> NEW.{store.quote(n)})" for n, _ in cols)
        new_key, old_key = _my_key_json("NEW", store, cols), _my_key_json("OLD", store, cols)
        guard = f"IF @dualwrite_replica IS NULL AND {MY_VARIABLE} IS NULL THEN"
        out: list[str] = []
        for suffix, event, body in (
                ("i", "INSERT", f"{head}{new_key}, {MY_WRITER});"),
                ("u", "UPDATE", f"{head}{old_key}, {MY_WRITER}); IF {moved} THEN {head}{new_key}, {MY_WRITER}); "
                                "END IF;"),
                ("d", "DELETE", f"{head}{old_key}, {MY_WRITER});")):
            out += [f"DROP TRIGGER IF EXISTS {trig}_{suffix}",
                    f"CREATE TRIGGER {trig}_{suffix} AFTER {event} ON {qt} FOR EACH ROW BEGIN {guard} {body} "
                    "END IF; END"]
        return out
    return []


def drop_sql(store: Store, migration: str, table: str) -> list[str]:
    trig, fn = _names(migration, table)
    if store.dialect is Dialect.POSTGRESQL:
        return [f"DROP TRIGGER IF EXISTS {trig} ON {store.quote(table)}", f"DROP FUNCTION IF EXISTS {fn}()"]
    if store.dialect is Dialect.MYSQL:
        return [f"DROP TRIGGER IF EXISTS {trig}_{s}" for s in "iud"]
    return []


def _run(store: Store, statements: Sequence[str]) -> None:
    if not statements:
        return
    with store.connect() as conn:
        cur = conn.cursor()
        for sql in statements:
            cur.execute(sql)
        cur.close()
        conn.commit()


def install(store: Store, migration: str, label: str, table: str, key: Sequence[str]) -> bool:
    """Create ``dualwrite_bypass`` (if missing) and (re)install capture on one table. Idempotent; False on a
    store that cannot capture (SQLite)."""
    if store.dialect is Dialect.SQLITE:
        return False
    bk.create_all(store, _ddl(store))
    if store.dialect is Dialect.MYSQL and installed(store, migration, table):
        return True  # MariaDB trigger DDL takes a metadata lock on a live table: leave a present one alone
    _run(store, capture_sql(store, migration, label, table, key))
    return True


def remove(store: Store, migration: str, table: str) -> None:
    """Drop the capture of one table (idempotent; a table that no longer exists is skipped)."""
    try:
        _run(store, drop_sql(store, migration, table))
    except Exception:
        if table in store.table_names():
            raise


def installed(store: Store, migration: str, table: str) -> bool:
    trig, _ = _names(migration, table)
    if store.dialect is Dialect.SQLITE:
        return False
    with store.connect() as conn:
        cur = conn.cursor()
        if store.dialect is Dialect.POSTGRESQL:
            cur.execute("SELECT COUNT(*) FROM pg_trigger WHERE tgname = %s AND NOT tgisinternal", (trig,))
        else:
            cur.execute("SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() "
                        "AND TRIGGER_NAME LIKE %s", (trig + "\\_%",))
        (n,) = cur.fetchone()
        cur.close()
        conn.rollback()
    return bool(n)


def _has_log(store: Store) -> bool:
    return store.dialect is not Dialect.SQLITE and BYPASS in store.table_names()


def collect(store: Store, control_store: Store, migration: str, kinds: dict[str, Sequence[Kind]], *,
            authoritative: str, limit: int = COLLECT_LIMIT) -> list[tuple[str, str, int, datetime]]:
    """Read this migration's bypass records on ``store``, queue their keys for repair (from the
    ``authoritative`` side), delete them, and return counts per (table, writer).

    The rows are read under FOR UPDATE and deleted in the same transaction, committed only after the keys
    are queued: a crash before the commit leaves them for the next collection (the keys may be queued twice,
    which is harmless); a crash after the commit but before the workflow records the result under-counts
    that one batch, while its keys are queued all the same."""
    if not _has_log(store):
        return []
    p = store.paramstyle
    age = ("EXTRACT(EPOCH FROM (now() - created_at))" if store.dialect is Dialect.POSTGRESQL
           else "TIMESTAMPDIFF(MICROSECOND, created_at, NOW(6)) / 1000000")
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT id, table_name, key_json, writer, {age} FROM {BYPASS} WHERE migration = {p} "
                    f"ORDER BY id LIMIT {int(limit)} FOR UPDATE", (migration,))
        rows = cur.fetchall()
        if not rows:
            cur.close()
            conn.rollback()
            return []
        keys: dict[str, dict[Any, None]] = {}
        groups: dict[tuple[str, str], tuple[int, float]] = {}
        for _id, table, wire, writer, secs in rows:
            kk = kinds.get(str(table))
            if kk is not None:
                k = decode_key(list(json.loads(wire)), kk)
                if k is not None:
                    keys.setdefault(str(table), {})[k] = None
            n, youngest = groups.get((str(table), str(writer)), (0, float("inf")))
            groups[(str(table), str(writer))] = (n + 1, min(youngest, float(secs or 0.0)))
        for table, ks in keys.items():
            control.enqueue_repair(control_store, migration, table, list(ks), reason="bypassed the adapter",
                                   authoritative=authoritative)
        ids = [int(r[0]) for r in rows]
        cur.execute(f"DELETE FROM {BYPASS} WHERE id IN ({', '.join(str(i) for i in ids)})")
        cur.close()
        conn.commit()
    now = datetime.now().astimezone()
    return [(t, w, n, now - timedelta(seconds=secs)) for (t, w), (n, secs) in sorted(groups.items())]


def discard(store: Store, migration: str) -> int:
    """Delete this migration's bypass records (abort, CLEANUP)."""
    if not _has_log(store):
        return 0
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"DELETE FROM {BYPASS} WHERE migration = {store.paramstyle}", (migration,))
        n = int(cur.rowcount or 0)
        cur.close()
        conn.commit()
    return n


# ---------------------------------------------------------------------------------------------------------
# after write cutover: the old store refuses writes that do not come through the adapter

#: why the old store cannot refuse raw writes on an engine (stated in status instead of staying silent)
REFUSE_UNSUPPORTED = {
    Dialect.SQLITE: "not supported on SQLite (a trigger cannot tell the adapter's writes from others); raw "
                    "writes to the old store after write cutover are not refused and not measured",
}


def refused_old_message(store: Store, migration: str, table: str) -> str:
    """The error a raw write to ``table`` on the old store reads after write cutover: which migration, and the
    way out. MariaDB keeps at most 128 characters of a SIGNAL's text: names are shortened there if need be."""
    text = (f"dualwrite migration {migration}: {table} on the old store refuses writes that bypass the adapter "
            "since write cutover (nothing would carry them to the new store); write through the dualwrite adapter")
    if store.dialect is not Dialect.MYSQL:
        return text

    def short(name: str, n: int) -> str:
        return name if len(name) <= n else name[:n - 3] + "..."

    return (f"dualwrite migration {short(migration, 24)}: {short(table, 24)} refuses raw writes after cutover; "
            "write through the dualwrite adapter")[:128]


def refuse_old(store: Store, migration: str, tables: Sequence[str]) -> str:
    """Make the migrated ``tables`` of the old store refuse every write that is neither the adapter's (marked
    transactions) nor dualwrite's own (replica sessions: repair, backfill), counting the refusals (PostgreSQL,
    MariaDB). Idempotent. '' when installed, else why not (SQLite)."""
    why = REFUSE_UNSUPPORTED.get(store.dialect)
    if why:
        return why
    triggers.deny_writes(store, migration, tables, "new", adapter_passes=True,
                         message_for=lambda t: refused_old_message(store, migration, t))
    return ""


def allow_old(store: Store, migration: str, tables: Sequence[str], *, final: bool = False) -> None:
    """Lift :func:`refuse_old` (rollback, a refused flip, abort, CLEANUP; idempotent). ``final``: the
    migration ends here, the refusal counters go too."""
    if store.dialect in REFUSE_UNSUPPORTED:
        return
    triggers.allow_writes(store, migration, tables)
    if final:
        triggers.drop_refusal_counters(store, migration, tables)


def old_refused(store: Store, migration: str, tables: Sequence[str]) -> dict[str, int]:
    """Writes the old store refused per table so far (tables whose engine does not count are left out)."""
    out: dict[str, int] = {}
    if store.dialect in REFUSE_UNSUPPORTED:
        return out
    for t in tables:
        n = triggers.refused_writes(store, migration, t)
        if n is not None:
            out[t] = n
    return out
