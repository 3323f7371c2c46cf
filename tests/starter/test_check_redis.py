"""``dualwrite check`` with a Redis new store: every problem of the ``redis:`` sections and the strategy at
once, with file lines; a Redis that keeps nothing on disk or evicts is refused as the authoritative store
with the settings to change; the memory the tables need is reported. Real PostgreSQL and real Redis (the
machine's, which keeps nothing on disk, and a private one with persistence on)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
import sqlalchemy as sa
from conftest import Databases, execute, pg_url
from test_check import check, store_env, write_spec

from dualwrite.keyvalue import start_redis
from dualwrite.store import Store


@pytest.fixture(scope="module")
def durable_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_redis(tmp_path_factory.mktemp("redis-check")) as server:
        yield f"redis://127.0.0.1:{server.port}/3"


@pytest.fixture
def customers(pg_old: Store, table_name: str) -> str:
    execute(pg_old, f"CREATE TABLE {table_name} (id bigint PRIMARY KEY, email text NOT NULL, "
                    "balance numeric(12,2), version bigint NOT NULL)",
            f"INSERT INTO {table_name} SELECT g, 'c' || g || '@x', g * 1.5, 1 FROM generate_series(1, 200) g")
    return table_name


def test_a_good_redis_spec_passes_and_reports_the_memory_it_needs(tmp_path: Path, pg_old: Store, customers: str,
                                                                   durable_redis: str) -> None:
    spec = write_spec(tmp_path, f"""
        name: to-redis
        old: pgold
        new: kv
        strategy: sync
        tables:
          - source: {customers}
            version_column: version
            redis: {{key: "customer:{{id}}", value: hash, prefix: "m1:"}}
        """)
    code, out = check(spec, store_env(pgold=pg_old, kv=durable_redis))
    assert code == 0, out
    assert "new store 'kv': redis" in out
    assert f"{customers} -> {customers}: key (id), 4 columns mapped" in out
    assert "Redis memory: the migrated tables need about" in out and "(estimate)" in out
    assert not redis.Redis.from_url(durable_redis).keys("*")  # nothing written


def test_every_redis_problem_is_reported_at_once_with_its_line(tmp_path: Path, pg_old: Store, customers: str,
                                                               durable_redis: str) -> None:
    spec = write_spec(tmp_path, f"""
        name: to-redis
        old: pgold
        new: kv
        strategy: triggers
        tables:
          - source: {customers}
            redis: {{key: "customer:{{email}}:{{email}}", value: hash}}
          - source: {customers}
            target: other
            reverse:
              email: {{expr: "lower(email)"}}
            redis: {{key: "c:{{id}}", value: json}}
          - source: {customers}
            target: third
        """)
    code, out = check(spec, store_env(pgold=pg_old, kv=durable_redis))
    assert code == 2, out
    lines = out.splitlines()

    def line_with(*parts: str) -> str:
        hits = [ln for ln in lines if all(p in ln for p in parts)]
        assert hits, f"no line with {parts} in:\n{out}"
        return hits[0]

    line_with("spec.yaml:7 tables[0].redis.key", "email is not a key column (the key is id)")
    line_with("spec.yaml:7 tables[0].redis.key", "key column(s) id missing")
    line_with("spec.yaml:7 tables[0].redis.key", "used more than once")
    line_with("spec.yaml:11 tables[1].reverse.email", "Redis runs no SQL")
    line_with("spec.yaml:13 tables[2].redis", "the new store is Redis")
    line_with("strategy triggers cannot be used with a Redis new store")


@pytest.mark.parametrize("strategy", ["outbox", "strict"])
def test_outbox_and_strict_are_accepted_with_a_redis_new_store(tmp_path: Path, pg_old: Store, customers: str,
                                                               durable_redis: str, strategy: str) -> None:
    spec = write_spec(tmp_path, f"""
        name: to-redis
        old: pgold
        new: kv
        strategy: {strategy}
        tables:
          - source: {customers}
            version_column: version
            redis: {{key: "customer:{{id}}"}}
        """)
    code, out = check(spec, store_env(pgold=pg_old, kv=durable_redis))
    assert code == 0, out
    assert "cannot be used with a Redis new store" not in out


@pytest.mark.parametrize(("strategy", "why"), [
    ("triggers", "Redis has no triggers"),
    ("cdc", "no change log"),
])
def test_strategies_redis_cannot_serve_are_refused_with_their_reason(tmp_path: Path, pg_old: Store, customers: str,
                                                                     durable_redis: str, strategy: str,
                                                                     why: str) -> None:
    spec = write_spec(tmp_path, f"""
        name: to-redis
        old: pgold
        new: kv
        strategy: {strategy}
        tables:
          - source: {customers}
            version_column: version
            redis: {{key: "customer:{{id}}"}}
        """)
    code, out = check(spec, store_env(pgold=pg_old, kv=durable_redis))
    assert code == 2, out
    refusal = next((ln for ln in out.splitlines()
                    if f"strategy {strategy} cannot be used with a Redis new store" in ln), None)
    assert refusal is not None and why in refusal and "outbox" in refusal, out


def test_a_redis_that_keeps_nothing_on_disk_is_refused_as_authoritative(tmp_path: Path, pg_old: Store,
                                                                         customers: str, volatile_redis: str) -> None:
    spec = write_spec(tmp_path, f"""
        name: to-redis
        old: pgold
        new: kv
        tables:
          - source: {customers}
            redis: {{key: "customer:{{id}}"}}
        """)
    code, out = check(spec, store_env(pgold=pg_old, kv=volatile_redis))
    assert code == 2, out
    assert "keeps nothing on disk" in out and "appendonly yes" in out
    assert "CUTOVER_WRITES" in out


def test_an_evicting_redis_is_refused_with_the_setting_to_change(tmp_path: Path, pg_old: Store, customers: str,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    with start_redis(tmp_path_factory.mktemp("redis-evict")) as server:
        client = redis.Redis(port=server.port)
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.config_set("maxmemory", str(1024 * 1024))
        spec = write_spec(tmp_path, f"""
            name: to-redis
            old: pgold
            new: kv
            tables:
              - source: {customers}
                redis: {{key: "customer:{{id}}"}}
            """)
        code, out = check(spec, store_env(pgold=pg_old, kv=server.url), "--json")
    assert code == 2, out
    report = json.loads(out)
    messages = " ".join(p["message"] for p in report["authority_problems"])
    assert "maxmemory-policy allkeys-lru" in messages and "noeviction" in messages
    assert report["store_notes"] and "maxmemory 1 MiB" in report["store_notes"][0]


def test_redis_cannot_be_the_old_or_control_store(tmp_path: Path, pg_old: Store, customers: str,
                                                  durable_redis: str) -> None:
    spec = write_spec(tmp_path, f"""
        name: to-redis
        old: pgold
        new: kv
        control_store: kv2
        tables:
          - source: {customers}
            redis: {{key: "customer:{{id}}"}}
        """)
    code, out = check(spec, store_env(pgold=pg_old, kv=durable_redis, kv2=durable_redis))
    assert code == 2, out
    assert "Redis can be the new store only" in out


def test_the_redis_example_spec_checks_clean(databases: Databases, repo_root: Path, durable_redis: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo_root)
    url = pg_url(databases.pg_db("exredis"))
    with psycopg.connect(sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
                         autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS orders")
        c.execute((repo_root / "examples" / "legacy.sql").read_text(encoding="utf-8"))
    code, out = check(repo_root / "examples" / "orders_redis.yaml",
                      {"DUALWRITE_STORE_LEGACY": url, "DUALWRITE_STORE_CACHE": durable_redis},
                      "--config", str(repo_root / "examples" / "dualwrite.yaml"))
    assert code == 0, out
    assert "orders -> orders: key (id), 9 columns mapped, version column version, 1,000 rows" in out
