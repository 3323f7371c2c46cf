"""`dualwrite check` for strategy ``cdc``: each server setting log capture needs is named with whether a
restart is needed, and a replication slot left behind by a crashed run is reported."""

from __future__ import annotations

from textwrap import dedent

from conftest import create_my, create_pg

from dualwrite.cdc import capture, pg
from dualwrite.config import StoreResolver, env_var_for
from dualwrite.preflight import preflight
from dualwrite.spec import parse_spec
from dualwrite.store import Store


def _report(old: Store, new: Store, table: str, name: str = "chk") -> list[str]:
    spec = parse_spec(dedent(f"""
        name: {name}
        old: {old.name}
        new: {new.name}
        strategy: cdc
        tables: [{{source: {table}, version_column: version}}]
        """))
    env = {env_var_for(s.name): s.engine.url.render_as_string(hide_password=False) for s in (old, new)}
    return [f"{p.where}: {p.message}" for p in preflight(spec, StoreResolver(environ=env)).problems]


def test_the_machines_default_servers_are_refused_naming_each_setting(
        pg_new: Store, my_old: Store, table_name: str) -> None:
    create_my(my_old, table_name, 3)
    create_pg(pg_new, table_name, 0)
    problems = _report(my_old, pg_new, table_name)
    text = "\n".join(problems)
    assert "log_bin is OFF; start the server with --log-bin" in text and "a server restart is needed" in text
    assert "wal_level is 'replica'; log capture needs wal_level = logical" in text
    assert all("(strategy cdc)" in p for p in problems), problems


def test_capture_ready_servers_pass_and_a_slot_left_behind_is_reported(
        cdc_pg_old: Store, cdc_pg_new: Store, cdc_my_old: Store, table_name: str) -> None:
    create_pg(cdc_pg_old, table_name, 3)
    create_pg(cdc_pg_new, table_name, 0)
    create_my(cdc_my_old, table_name, 3)
    assert _report(cdc_my_old, cdc_pg_new, table_name) == []
    assert _report(cdc_pg_old, cdc_pg_new, table_name) == []
    # a crashed run: its slot stays and holds WAL back
    crashed = f"crashed-{table_name[-4:]}"
    capture.setup(cdc_pg_old, cdc_pg_old, crashed, [table_name])
    try:
        slot, _ = pg.capture_names(crashed, cdc_pg_old.name)
        problems = _report(cdc_pg_old, cdc_pg_new, table_name, name=crashed)
        assert any(f"a replication slot {slot} of migration '{crashed}' already exists" in p
                   and f"pg_drop_replication_slot('{slot}')" in p for p in problems), problems
    finally:
        capture.teardown(cdc_pg_old, cdc_pg_old, crashed)


def test_a_binlog_kept_for_less_than_a_migration_lasts_is_reported(
        cdc_my_old: Store, cdc_pg_new: Store, table_name: str) -> None:
    """A binlog purged before the relay read it is changes lost: retention is checked before the start."""
    from conftest import execute

    create_my(cdc_my_old, table_name, 3)
    create_pg(cdc_pg_new, table_name, 0)
    execute(cdc_my_old, "SET GLOBAL binlog_expire_logs_seconds = 7200")
    try:
        problems = "\n".join(_report(cdc_my_old, cdc_pg_new, table_name))
        assert "binlogs expire after 2 hours" in problems and "binlog_expire_logs_seconds = 604800" in problems
        assert "no restart needed" in problems
    finally:
        execute(cdc_my_old, "SET GLOBAL binlog_expire_logs_seconds = 0")
    assert _report(cdc_my_old, cdc_pg_new, table_name) == []
