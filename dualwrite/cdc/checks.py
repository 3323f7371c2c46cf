"""Preflight of log capture (strategy ``cdc``): server settings, free slots, privileges, leftovers.

Each problem names the exact setting to change and whether the server must restart for it, because the
settings log capture needs are the kind nobody changes lightly on a production primary. Read-only: this
module queries settings and catalogs, it never creates a slot.
"""

from __future__ import annotations

from typing import Any

from dualwrite.cdc.pg import capture_names
from dualwrite.store import Dialect, Store

RESTART = "a server restart is needed"
RELOAD = "no restart needed (SET GLOBAL, and in the config file to keep it)"
MIN_BINLOG_RETENTION_SECONDS = 7 * 24 * 3600
"""How long a binlog must be kept at least: a migration with its soak times runs for days, and a binlog purged
before the relay read it is changes lost (the position then names a file the server no longer has)."""


def _rows(store: Store, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(sql, params)
        rows = [tuple(r) for r in cur.fetchall()]
        cur.close()
        conn.rollback()
    return rows


def capture_problems(store: Store, migration: str, role: str) -> list[str]:
    """What keeps ``store`` from being captured by migration ``migration`` (empty: ready).

    ``role`` is 'old' or 'new': both stores are captured (the new one after write cutover, for rollback)."""
    if store.dialect is Dialect.POSTGRESQL:
        return _pg(store, migration)
    if store.dialect is Dialect.MYSQL:
        return _mysql(store)
    return [f"strategy cdc cannot capture a SQLite store ({role}): it has no change log; use strategy triggers"]


def _pg(store: Store, migration: str) -> list[str]:
    out: list[str] = []
    settings = dict(_rows(store, "SELECT name, setting FROM pg_settings WHERE name IN "
                                 "('wal_level', 'max_replication_slots', 'max_wal_senders')"))
    if settings.get("wal_level") != "logical":
        out.append(f"wal_level is {settings.get('wal_level')!r}; log capture needs wal_level = logical "
                   f"(ALTER SYSTEM SET wal_level = logical; {RESTART})")
    slot, _ = capture_names(migration, store.name)
    slots = _rows(store, "SELECT slot_name, active, database FROM pg_replication_slots")
    ours = [s for s in slots if s[0] == slot]
    free = int(settings.get("max_replication_slots", 0)) - len(slots)
    if not ours and free < 1:
        out.append(f"max_replication_slots = {settings.get('max_replication_slots')} and all are in use; "
                   f"raise it by one per migration on this server ({RESTART})")
    if int(settings.get("max_wal_senders", 0)) < 1:
        out.append(f"max_wal_senders is 0; set it to at least 1 ({RESTART})")
    if ours:
        out.append(f"a replication slot {slot} of migration {migration!r} already exists (active: {ours[0][1]}): "
                   "left by an earlier or crashed run, it holds WAL back; if no migration of this name runs, "
                   f"drop it: SELECT pg_drop_replication_slot('{slot}')")
    role = _rows(store, "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user")
    if role and not (role[0][0] or role[0][1]):
        out.append("the user has neither SUPERUSER nor REPLICATION: ALTER ROLE <user> REPLICATION (no restart); "
                   "creating the publication also needs ownership of the migrated tables")
    return out


def _mysql(store: Store) -> list[str]:
    out: list[str] = []
    version = str(_rows(store, "SELECT VERSION()")[0][0]).lower()
    mariadb = "mariadb" in version
    names = ["log_bin", "binlog_format", "binlog_row_image", "server_id", "binlog_expire_logs_seconds",
             "expire_logs_days"]
    if mariadb:
        names.append("binlog_row_metadata")
    got = {str(k).lower(): str(v) for k, v in _rows(
        store, f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({', '.join(['%s'] * len(names))})", tuple(names))}
    if got.get("log_bin", "OFF").upper() not in ("ON", "1"):
        out.append(f"log_bin is OFF; start the server with --log-bin (and --server-id) ({RESTART})")
    if got.get("binlog_format", "").upper() != "ROW":
        out.append(f"binlog_format is {got.get('binlog_format')!r}; set binlog_format = ROW ({RELOAD})")
    if got.get("binlog_row_image", "").upper() != "FULL":
        out.append(f"binlog_row_image is {got.get('binlog_row_image')!r}; set binlog_row_image = FULL ({RELOAD})")
    if mariadb and got.get("binlog_row_metadata", "").upper() != "FULL":
        out.append(f"binlog_row_metadata is {got.get('binlog_row_metadata')!r}; set binlog_row_metadata = FULL "
                   f"({RELOAD}); without it column names arrive as UNKNOWN_COL0...")
    if got.get("server_id", "0") == "0":
        out.append(f"server_id is 0; a server that writes a binlog needs a non-zero server_id ({RESTART})")
    out += _retention(got)
    grants = " ".join(str(r[0]).upper() for r in _rows(store, "SHOW GRANTS FOR CURRENT_USER()"))
    needs = ["REPLICATION SLAVE", "BINLOG MONITOR" if mariadb else "REPLICATION CLIENT"]
    if "ALL PRIVILEGES ON *.*" not in grants:
        for grant in needs:
            alt = grant.replace("SLAVE", "REPLICA")
            if grant not in grants and alt not in grants and not (grant == "BINLOG MONITOR"
                                                                  and "REPLICATION CLIENT" in grants):
                out.append(f"the user lacks {grant}: GRANT {grant} ON *.* TO <user> (no restart)")
    return out


def _retention(got: dict[str, str]) -> list[str]:
    """Binlog retention against the length of a migration (0 on both settings: kept until purged by hand)."""
    seconds = int(float(got.get("binlog_expire_logs_seconds", "0") or 0))
    if not seconds:
        seconds = int(float(got.get("expire_logs_days", "0") or 0) * 86400)
    if 0 < seconds < MIN_BINLOG_RETENTION_SECONDS:
        return [f"binlogs expire after {seconds / 3600:g} hours (binlog_expire_logs_seconds / expire_logs_days); "
                "a migration runs for days and a binlog purged before the relay read it loses changes: set "
                f"binlog_expire_logs_seconds = {MIN_BINLOG_RETENTION_SECONDS} or more, or 0 ({RELOAD})"]
    return []
