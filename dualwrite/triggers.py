"""Change capture with database triggers, for applications that cannot be changed (strategy ``triggers``).

Row-level AFTER triggers on a migrated table append the key of every inserted, updated or deleted row to
``dualwrite_changelog`` in the same store, inside the writing transaction (an UPDATE that moves a row to
another key logs both keys). A relay mirrors the logged keys with the one mirror primitive, exactly as for
the outbox. Only keys are logged; the key is rendered as the same JSON list :func:`dualwrite.keys.encode_key`
produces, so the relay decodes it with the mapping's key kinds.

Triggers can be installed on both stores (the new one captures writes after write cutover, to keep the old
store in sync for rollback). Writes made by dualwrite itself (relay mirrors, backfill, repair) must not be
captured again, or every mirrored row would bounce back: connections of a store passed to
:func:`mark_replica` set a session flag (``dualwrite.replica`` on PostgreSQL, ``@dualwrite_replica`` on
MariaDB) that the triggers check. SQLite has no session state a trigger can read: there a mirrored write
is captured once more and mirrored back as a no-op (the images are equal, and the version guard refuses it).

TRUNCATE and DDL are not captured.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from dualwrite.capture import method_for
from dualwrite.errors import TriggerError
from dualwrite.outbox import CHANGELOG, ensure_log
from dualwrite.spec import MigrationSpec
from dualwrite.store import Dialect, Kind, Store


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _names(migration: str, table: str) -> tuple[str, str]:
    digest = hashlib.blake2s(f"{migration}\0{table}".encode(), digest_size=4).hexdigest()
    base = "".join(ch if ch.isalnum() else "_" for ch in table.rsplit(".", 1)[-1])[:24]
    return f"dw_cap_{base}_{digest}", f"dw_capfn_{base}_{digest}"


def _key_columns(store: Store, table: str, key: Sequence[str]) -> list[tuple[str, Kind]]:
    info = store.describe(table)
    return [(k, info.columns[k].kind) for k in key]


def _pg_key_json(row: str, store: Store, cols: Sequence[tuple[str, Kind]]) -> str:
    parts = []
    for name, kind in cols:
        c = f"{row}.{store.quote(name)}"
        if kind in (Kind.INT, Kind.BOOL, Kind.FLOAT, Kind.TEXT):
            parts.append(c)
        elif kind is Kind.TIMESTAMP:
            parts.append(f"to_char({c}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')")
        elif kind is Kind.TIMESTAMPTZ:
            parts.append(f"to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')")
        elif kind is Kind.BYTES:
            parts.append(f"'b64:' || translate(encode({c}, 'base64'), E'\\n', '')")
        else:  # decimal, uuid, date, time, other: their text form decodes exactly
            parts.append(f"({c})::text")
    return f"json_build_array({', '.join(parts)})::text"


def _my_key_json(row: str, store: Store, cols: Sequence[tuple[str, Kind]]) -> str:
    parts = []
    for name, kind in cols:
        c = f"{row}.{store.quote(name)}"
        if kind in (Kind.INT, Kind.BOOL, Kind.FLOAT, Kind.TEXT):
            parts.append(c)
        elif kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
            parts.append(f"DATE_FORMAT({c}, '%Y-%m-%dT%H:%i:%s.%f')")
        elif kind is Kind.BYTES:
            parts.append(f"CONCAT('b64:', REPLACE(TO_BASE64({c}), CHAR(10), ''))")
        else:
            parts.append(f"CAST({c} AS CHAR)")
    return f"JSON_ARRAY({', '.join(parts)})"


def _sqlite_key_json(row: str, store: Store, cols: Sequence[tuple[str, Kind]]) -> str:
    for name, kind in cols:
        if kind is Kind.BYTES:
            raise TriggerError(f"key column {name!r} is binary: SQLite triggers cannot log it as JSON")
    return f"json_array({', '.join(f'{row}.{store.quote(n)}' for n, _ in cols)})"


def trigger_sql(store: Store, migration: str, table: str, key: Sequence[str], *, log: str = CHANGELOG
                ) -> list[str]:
    """The statements that (re)install capture triggers on ``table`` (``table`` as the spec names it)."""
    if store.dialect is Dialect.MYSQL:
        defs = _my_trigger_defs(store, migration, table, key, log=log)
        return [*(f"DROP TRIGGER IF EXISTS {name}" for name in defs),
                *(f"CREATE TRIGGER {name} {event} {body}" for name, (event, body) in defs.items())]
    cols = _key_columns(store, table, key)
    trig, fn = _names(migration, table)
    qt = store.quote(table)
    head = f"INSERT INTO {log} (migration, table_name, key_json) VALUES ({_lit(migration)}, {_lit(table)}, "
    if store.dialect is Dialect.POSTGRESQL:
        moved = " OR ".join(f"OLD.{store.quote(n)} IS DISTINCT FROM NEW.{store.quote(n)}" for n, _ in cols)
        body = (
            f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $dw$\n"
            "BEGIN\n"
            "  IF coalesce(current_setting('dualwrite.replica', true), '') = 'on' THEN RETURN NULL; END IF;\n"
            f"  IF TG_OP <> 'INSERT' THEN {head}{_pg_key_json('OLD', store, cols)}); END IF;\n"
            f"  IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND ({moved})) THEN "
            f"{head}{_pg_key_json('NEW', store, cols)}); END IF;\n"
            "  RETURN NULL;\n"
            "END $dw$"
        )
        return [body, f"DROP TRIGGER IF EXISTS {trig} ON {qt}",
                f"CREATE TRIGGER {trig} AFTER INSERT OR UPDATE OR DELETE ON {qt} FOR EACH ROW EXECUTE FUNCTION {fn}()"]
    moved = " OR ".join(f"NOT (OLD.{store.quote(n)} IS NEW.{store.quote(n)})" for n, _ in cols)
    new_key, old_key = _sqlite_key_json("NEW", store, cols), _sqlite_key_json("OLD", store, cols)
    sel = f"INSERT INTO {log} (migration, table_name, key_json) SELECT {_lit(migration)}, {_lit(table)}, "
    return [
        f"DROP TRIGGER IF EXISTS {trig}_i", f"DROP TRIGGER IF EXISTS {trig}_u", f"DROP TRIGGER IF EXISTS {trig}_d",
        f"CREATE TRIGGER {trig}_i AFTER INSERT ON {qt} BEGIN {head}{new_key}); END",
        f"CREATE TRIGGER {trig}_u AFTER UPDATE ON {qt} BEGIN {head}{old_key}); {sel}{new_key} WHERE {moved}; END",
        f"CREATE TRIGGER {trig}_d AFTER DELETE ON {qt} BEGIN {head}{old_key}); END",
    ]


def _my_trigger_defs(store: Store, migration: str, table: str, key: Sequence[str], *, log: str = CHANGELOG
                     ) -> dict[str, tuple[str, str]]:
    """MariaDB/MySQL: trigger name -> (event clause, body) of the three capture triggers of ``table``."""
    cols = _key_columns(store, table, key)
    trig, _ = _names(migration, table)
    qt = store.quote(table)
    head = f"INSERT INTO {log} (migration, table_name, key_json) VALUES ({_lit(migration)}, {_lit(table)}, "
    moved = " OR ".join(f"NOT (OLD.{store.quote(n)} <=> NEW.{store.quote(n)})" for n, _ in cols)
    new_key, old_key = _my_key_json("NEW", store, cols), _my_key_json("OLD", store, cols)
    guard = "IF @dualwrite_replica IS NULL THEN"
    return {
        f"{trig}_i": (f"AFTER INSERT ON {qt} FOR EACH ROW", f"BEGIN {guard} {head}{new_key}); END IF; END"),
        f"{trig}_u": (f"AFTER UPDATE ON {qt} FOR EACH ROW", f"BEGIN {guard} {head}{old_key}); "
                                                            f"IF {moved} THEN {head}{new_key}); END IF; END IF; END"),
        f"{trig}_d": (f"AFTER DELETE ON {qt} FOR EACH ROW", f"BEGIN {guard} {head}{old_key}); END IF; END"),
    }


def _my_install_sql(store: Store, migration: str, table: str, key: Sequence[str], *, log: str = CHANGELOG
                    ) -> list[str]:
    """MariaDB/MySQL: the statements that bring the capture triggers of ``table`` to what they should be.

    Every trigger statement there is DDL that commits on its own, so dropping and re-creating a trigger
    leaves a moment in which the application's writes are not captured at all; and each one takes an
    exclusive metadata lock on a live table, which stalls every writer behind it and aborts as a deadlock
    any transaction that read the table and then locks rows of it (a preflight's SELECT, then SELECT ...
    FOR UPDATE). So triggers already installed as wanted are left alone (a relay reinstalls on every
    start), and MariaDB replaces a changed one in a single statement. MySQL has no CREATE OR REPLACE
    TRIGGER: there a changed trigger is still dropped and re-created, and only reconciliation covers
    writes in that moment.
    """
    defs = _my_trigger_defs(store, migration, table, key, log=log)
    schema = table.rpartition(".")[0]
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute("SELECT TRIGGER_NAME, ACTION_STATEMENT FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = "
                    f"{'%s' if schema else 'DATABASE()'} AND TRIGGER_NAME IN ({', '.join(['%s'] * len(defs))})",
                    (*([schema] if schema else []), *defs))
        current = {str(name): str(body) for name, body in cur.fetchall()}
        cur.execute("SELECT VERSION()")
        mariadb = "mariadb" in str(cur.fetchone()[0]).lower()
        cur.close()
        conn.rollback()
    todo = {name: d for name, d in defs.items() if current.get(name) != d[1]}
    if mariadb:
        return [f"CREATE OR REPLACE TRIGGER {name} {event} {body}" for name, (event, body) in todo.items()]
    return [*(f"DROP TRIGGER IF EXISTS {name}" for name in todo),
            *(f"CREATE TRIGGER {name} {event} {body}" for name, (event, body) in todo.items())]


def drop_sql(store: Store, migration: str, table: str) -> list[str]:
    trig, fn = _names(migration, table)
    if store.dialect is Dialect.POSTGRESQL:
        return [f"DROP TRIGGER IF EXISTS {trig} ON {store.quote(table)}", f"DROP FUNCTION IF EXISTS {fn}()"]
    return [f"DROP TRIGGER IF EXISTS {trig}_{s}" for s in "iud"]


def _run(store: Store, statements: Sequence[str]) -> None:
    with store.connect() as conn:
        cur = conn.cursor()
        for sql in statements:
            cur.execute(sql)
        cur.close()
        conn.commit()


def install_triggers(store: Store, migration: str, table: str, key: Sequence[str], *, log: str = CHANGELOG) -> None:
    """Create the change log (if missing) and (re)install the capture triggers of one table. Idempotent:
    on MariaDB/MySQL triggers already as wanted are not touched (see :func:`_my_install_sql`)."""
    ensure_log(store, log)
    if store.dialect is Dialect.MYSQL:
        statements = _my_install_sql(store, migration, table, key, log=log)
    else:
        statements = trigger_sql(store, migration, table, key, log=log)
    if statements:
        _run(store, statements)


def remove_triggers(store: Store, migration: str, table: str) -> None:
    """Drop the capture triggers of one table (the change log itself is left for the relay to finish)."""
    _run(store, drop_sql(store, migration, table))


def installed(store: Store, migration: str, table: str) -> bool:
    """Are the capture triggers of ``table`` present?"""
    return _triggers_present(store, _names(migration, table)[0])


def _triggers_present(store: Store, trig: str, *, all_events: bool = False) -> bool:
    """Is the trigger ``trig`` (PostgreSQL) or are its per-event siblings ``trig_*`` (MariaDB, SQLite) there?
    With ``all_events``: all three siblings (insert, update, delete)."""
    with store.connect() as conn:
        cur = conn.cursor()
        if store.dialect is Dialect.POSTGRESQL:
            cur.execute("SELECT COUNT(*) FROM pg_trigger WHERE tgname = %s AND NOT tgisinternal", (trig,))
        elif store.dialect is Dialect.MYSQL:
            cur.execute("SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() "
                        "AND TRIGGER_NAME LIKE %s", (trig + "\\_%",))
        else:
            cur.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE ?", (trig + "_%",))
        (n,) = cur.fetchone()
        cur.close()
        conn.rollback()
    if all_events and store.dialect is not Dialect.POSTGRESQL:
        return int(n) >= 3
    return bool(n)


# ---------------------------------------------------------------------------------------------------------
# replica marking: dualwrite's own writes are not captured

_marked: set[int] = set()
_marked_lock = threading.Lock()


def _set_replica_flag(dialect: Dialect) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        if dialect is Dialect.SQLITE:
            # no session variables: the deny triggers call this function, which only replica sessions define
            dbapi_conn.create_function(SQLITE_REPLICA_FN, 0, lambda: 1, deterministic=True)
        elif dialect is Dialect.POSTGRESQL:
            cur.execute("SET dualwrite.replica = 'on'")
        elif dialect is Dialect.MYSQL:
            cur.execute("SET @dualwrite_replica = 1")
        cur.close()
        if dialect is not Dialect.SQLITE:
            dbapi_conn.commit()

    return on_connect


def mark_replica(store: Store) -> None:
    """Make every connection of ``store`` a replica session: capture triggers ignore its writes.

    Use it on the stores of the worker (relay, backfill, repair), never on the stores an application writes
    through. Existing pooled connections are replaced so none of them writes unmarked.
    """
    with _marked_lock:
        if id(store.engine) in _marked:
            return
        sa.event.listen(store.engine, "connect", _set_replica_flag(store.dialect))
        _marked.add(id(store.engine))
    store.engine.dispose()


def is_replica(store: Store) -> bool:
    return id(store.engine) in _marked


# ---------------------------------------------------------------------------------------------------------
# denied writes: the store that is not authoritative refuses writes that bypass dualwrite

#: SQLSTATE of a refused write (PostgreSQL: raise_exception's class; MariaDB: unhandled user exception)
DENIED_SQLSTATE_PG = "P0001"
DENIED_SQLSTATE_MY = "45000"
#: the adapter's mark (:mod:`dualwrite.bypass`): a PostgreSQL setting its own engines set at connect time,
#: the comment its transactions' statements carry on the application's engine, a MariaDB session variable
ADAPTER_SETTING = "dualwrite.adapter"
ADAPTER_COMMENT = "/*dualwrite:adapter*/ "
ADAPTER_VARIABLE = "@dualwrite_adapter"
#: SQLite has no session state: a connection dualwrite marks as a replica defines this function, and the
#: deny triggers call it, so an application's connection fails to prepare the write ("no such function")
SQLITE_REPLICA_FN = "dualwrite_replica"


def denial_applies(spec: MigrationSpec) -> bool:
    """Writes that bypass dualwrite are denied on the non-authoritative store for database-level capture
    (``triggers``, ``cdc``) of a migration whose authority moves as a whole. Per-tenant authority cannot be denied
    table by table: there both key logs are mirrored as before, and the README says so."""
    return method_for(spec.strategy).database_capture and not spec.tenant_tables


def authoritative_side(phase: str | None) -> str:
    """'old' or 'new' for a published phase name (docs/architecture.md, "Authority, fences and denied
    writes": the old store until write cutover, 'new' from CUTOVER_WRITES on)."""
    return "new" if phase in ("CUTOVER_WRITES", "CLEANUP", "DONE") else "old"


def _deny_names(migration: str, table: str) -> tuple[str, str]:
    digest = hashlib.blake2s(f"{migration}\0{table}\0deny".encode(), digest_size=4).hexdigest()
    base = "".join(ch if ch.isalnum() else "_" for ch in table.rsplit(".", 1)[-1])[:24]
    return f"dw_deny_{base}_{digest}", f"dw_denyfn_{base}_{digest}"


def _counter_name(store: Store, migration: str, table: str) -> str:
    """The sequence that counts refused writes: a sequence, because its increments survive the refused
    statement's rollback (PostgreSQL, MariaDB). In the table's schema, so its grants follow the table's."""
    trig, _ = _deny_names(migration, table)
    schema = table.rpartition(".")[0]
    name = "dw_refused_" + trig.removeprefix("dw_deny_")
    return f"{store.quote(schema)}.{name}" if schema else name


def _counts_refusals(store: Store) -> bool:
    """PostgreSQL and MariaDB have sequences; MySQL and SQLite refuse without counting."""
    return store.dialect is Dialect.POSTGRESQL or store.is_mariadb


def denied_message(table: str, authoritative: str) -> str:
    """What a writer that bypasses dualwrite reads when it writes a table on the non-authoritative store.

    MariaDB keeps at most 128 characters of a SIGNAL's text, so the table name is shortened if need be."""
    name = table if len(table) <= 40 else table[:37] + "..."
    return f"dualwrite: writes to {name} are refused here; the table is served by store '{authoritative}' now"[:128]


def deny_sql(store: Store, migration: str, table: str, authoritative: str, *, count: bool = False,
             adapter_passes: bool = False, message: str | None = None) -> list[str]:
    """The statements that make ``table`` refuse every write that is not dualwrite's own (a replica session).

    Vitess's "denied tables" at a switch of writes: an application that does not write through the adapter
    (strategy ``triggers``, later log capture) and keeps writing to the store that lost authority gets an
    error naming where the table is served now, instead of a write that the next mirror would silently
    overwrite. The relay, backfill and repair write through replica sessions and pass.

    ``adapter_passes``: the adapter's marked transactions pass too (adapter strategies after write cutover,
    :func:`dualwrite.bypass.refuse_old`: the adapter keeps the old store in sync for rollback, a raw write
    there would be lost). ``message``: the error text instead of :func:`denied_message` (PostgreSQL and
    MariaDB; SQLite cannot tell the adapter's writes apart, see :func:`dualwrite.bypass.refuse_old`)."""
    trig, fn = _deny_names(migration, table)
    qt = store.quote(table)
    msg = message or denied_message(table, authoritative)
    seq = _counter_name(store, migration, table)
    if store.dialect is Dialect.POSTGRESQL:
        passes = ("coalesce(current_setting('dualwrite.replica', true), '') = 'on'"
                  + (f" OR coalesce(current_setting('{ADAPTER_SETTING}', true), '') = 'on'"
                     f" OR strpos(current_query(), {_lit(ADAPTER_COMMENT.strip())}) > 0" if adapter_passes else ""))
        return [
            f"CREATE SEQUENCE IF NOT EXISTS {seq}",
            f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $dw$\n"
            "BEGIN\n"
            f"  IF {passes} THEN RETURN NULL; END IF;\n"
            f"  PERFORM nextval({_lit(seq)});\n"
            f"  RAISE EXCEPTION USING ERRCODE = '{DENIED_SQLSTATE_PG}', MESSAGE = {_lit(msg)};\n"
            "END $dw$",
            f"DROP TRIGGER IF EXISTS {trig} ON {qt}",
            f"CREATE TRIGGER {trig} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {qt} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
        ]
    if store.dialect is Dialect.MYSQL:
        bump = f"SET @dualwrite_refused = NEXTVAL({seq}); " if count else ""
        guard = "@dualwrite_replica IS NULL" + (f" AND {ADAPTER_VARIABLE} IS NULL" if adapter_passes else "")
        body = (f"BEGIN IF {guard} THEN {bump}SIGNAL SQLSTATE '{DENIED_SQLSTATE_MY}' "
                f"SET MESSAGE_TEXT = {_lit(msg)}; END IF; END")
        out = [f"CREATE SEQUENCE IF NOT EXISTS {seq} NOCACHE"] if count else []
        for suffix, event in (("i", "INSERT"), ("u", "UPDATE"), ("d", "DELETE")):
            if store.is_mariadb:
                # one statement: a DROP then CREATE (each DDL commits on its own) let writes in between
                out += [f"CREATE OR REPLACE TRIGGER {trig}_{suffix} BEFORE {event} ON {qt} FOR EACH ROW {body}"]
            else:  # MySQL has no CREATE OR REPLACE TRIGGER
                out += [f"DROP TRIGGER IF EXISTS {trig}_{suffix}",
                        f"CREATE TRIGGER {trig}_{suffix} BEFORE {event} ON {qt} FOR EACH ROW {body}"]
        return out
    out = []
    for suffix, event in (("i", "INSERT"), ("u", "UPDATE"), ("d", "DELETE")):
        out += [f"DROP TRIGGER IF EXISTS {trig}_{suffix}",
                f"CREATE TRIGGER {trig}_{suffix} BEFORE {event} ON {qt} WHEN {SQLITE_REPLICA_FN}() IS NOT 1 "
                f"BEGIN SELECT RAISE(ABORT, {_lit(msg)}); END"]
    return out


def undeny_sql(store: Store, migration: str, table: str) -> list[str]:
    trig, fn = _deny_names(migration, table)
    if store.dialect is Dialect.POSTGRESQL:
        return [f"DROP TRIGGER IF EXISTS {trig} ON {store.quote(table)}", f"DROP FUNCTION IF EXISTS {fn}()"]
    return [f"DROP TRIGGER IF EXISTS {trig}_{s}" for s in "iud"]


def deny_writes(store: Store, migration: str, tables: Sequence[str], authoritative: str, *,
                adapter_passes: bool = False, message_for: Callable[[str], str] | None = None) -> None:
    """Make ``tables`` on ``store`` refuse writes that bypass dualwrite (idempotent), counting them.
    ``adapter_passes`` / ``message_for`` (the error text per table): see :func:`deny_sql`."""
    count = _counts_refusals(store)
    _run(store, [sql for t in tables for sql in deny_sql(
        store, migration, t, authoritative, count=count, adapter_passes=adapter_passes,
        message=message_for(t) if message_for is not None else None)])


def refused_writes(store: Store, migration: str, table: str) -> int | None:
    """How many writes to ``table`` on ``store`` were refused so far (None: not counted on this engine, or
    the table was never denied)."""
    if not _counts_refusals(store):
        return None
    seq = _counter_name(store, migration, table)
    sql = (f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {seq}"
           if store.dialect is Dialect.POSTGRESQL else f"SELECT next_not_cached_value - 1 FROM {seq}")
    with store.connect() as conn:
        cur = conn.cursor()
        try:
            cur.execute(sql)
            (n,) = cur.fetchone()
        except Exception:  # noqa: BLE001 - no counter: the table was never denied
            return None
        finally:
            cur.close()
            conn.rollback()
    return int(n)


def drop_refusal_counters(store: Store, migration: str, tables: Sequence[str]) -> None:
    """Remove the counters (at the end of a migration; the deny triggers must be gone already)."""
    if _counts_refusals(store):
        _run(store, [f"DROP SEQUENCE IF EXISTS {_counter_name(store, migration, t)}" for t in tables])


def allow_writes(store: Store, migration: str, tables: Sequence[str]) -> None:
    """Lift :func:`deny_writes` (idempotent; a table that no longer exists is skipped)."""
    for t in tables:
        try:
            _run(store, undeny_sql(store, migration, t))
        except Exception:
            if t in store.table_names():
                raise


def writes_denied(store: Store, migration: str, table: str) -> bool:
    """Does ``table`` on ``store`` refuse writes that bypass dualwrite? On MariaDB and SQLite only when all
    three per-event triggers are there: with one missing, those writes land."""
    return _triggers_present(store, _deny_names(migration, table)[0], all_events=True)


def still_denied(conn: Any, store: Store, migration: str, table: str) -> bool:
    """In the caller's open transaction on ``store``: does ``table`` still refuse the application's writes?

    The table is locked first (a row-exclusive lock on PostgreSQL, a shared-write metadata lock on MariaDB),
    and lifting a denial drops triggers, which waits for that lock: a caller that sees True writes before the
    lift commits, never after it."""
    trig, _ = _deny_names(migration, table)
    cur = conn.cursor()
    try:
        if store.dialect is Dialect.POSTGRESQL:
            qt = _qualified(store, table)
            cur.execute(f"LOCK TABLE {qt} IN ROW EXCLUSIVE MODE")
            cur.execute("SELECT COUNT(*) FROM pg_trigger WHERE tgname = %s AND tgrelid = %s::regclass "
                        "AND NOT tgisinternal", (trig, qt))
            return bool(cur.fetchone()[0])
        if store.dialect is Dialect.MYSQL:
            cur.execute(f"DELETE FROM {_qualified(store, table)} WHERE 1 = 0")  # takes the metadata lock
            cur.execute("SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() "
                        "AND TRIGGER_NAME LIKE %s", (trig + "\\_%",))
            return int(cur.fetchone()[0]) >= 3
        return True  # SQLite: one writer at a time, no concurrent lift to race
    finally:
        cur.close()


def _qualified(store: Store, table: str) -> str:
    return ".".join(store.quote(p) for p in table.split(".")) if "." in table else store.quote(table)
