"""Chaos convergence run: writers that behave like real applications, through every phase transition, while
faults are injected; then reconciliation, and a check of every acknowledged write against the stores.

    python -m bench.chaos --seconds 60 --pair pg-pg|mariadb-pg|pg-redis \\
        --strategy strict|sync|async|outbox|triggers|cdc [--writer adapter|raw] [--ack-log FILE] \\
        [--rng-seed N] [--servers-dir DIR] [--no-temporal] [--quiet]

Writers (``--clients`` threads):

- ``--writer adapter`` (the default for the strategies that need the adapter: ``strict``, ``sync``,
  ``async``, ``outbox``): every write through one :class:`DualWriter`, plus an adapter *process* whose writes
  die by SIGKILL right after an authoritative commit (chaos hook ``adapter.after_primary_commit``), respawned;
- ``--writer raw`` (the default for ``triggers`` and ``cdc``, the strategies that capture in the database):
  plain SQL straight to the old store's tables, no adapter, as an application that was not changed. It
  keeps writing to the old store in every phase, also after write cutover: a write the old store committed
  is acknowledged, and the rule is that it must then be carried forward to the authoritative store, or
  refused with an error at the writer (then it was never acknowledged).

Three tables, with an integer key (0 and negatives included), a composite (integer, string) key and a
CHAR(36) UUID key (a native ``uuid`` column on the new PostgreSQL store). Operations, on random tables: inserts
of new keys above and below the current key range, updates that bump the version column and updates that
do not touch it, deletes, delete + re-insert of the same key with the version restarting at 1, and bursts of
writes on a few hot keys shared by all clients.

With Temporal (the default): a dev server (persistent ``--db-filename``, restarted once), ``worker.py``
processes, and the MigrationWorkflow driven, while the writers write, through DUAL_WRITE, BACKFILL,
SHADOW_READ, CUTOVER_READS, a *forced* advance into CUTOVER_WRITES, a rollback to CUTOVER_READS and a forced
advance into CUTOVER_WRITES again. A worker is SIGKILLed during the backfill (the worker running a
``copy_range``), a verification, the authority switch into CUTOVER_WRITES and the rollback (the worker
running the step's activity, found by its identity in the workflow's pending activities; a worker that
also runs an activity Temporal would retry only after minutes is spared, and such activities are listed).
The new store sits behind a loopback :class:`~bench.faultproxy.FaultProxy` that refuses,
delays, cuts and black-holes connections throughout.

The acknowledgement log holds every write a writer was told succeeded, with its value (``--ack-log FILE``
also writes each attempt as a JSON line); a write that failed is not acknowledged (its outcome is uncertain:
either is accepted). At the end the writes stop, faults stop, the key logs and the repair queue drain, the
workflow verifies and repairs, and then the harness reads both stores itself:

- every acknowledged write must be in the *authoritative* store (the new one when the migration ends in
  CUTOVER_WRITES) with its last acknowledged value: the last acknowledged write per key decides (value or
  deleted). ``lost acknowledged writes: N`` counts keys whose last acknowledged write is missing or was
  reverted to another value, ``resurrected deletes: N`` keys whose acknowledged delete came back;
- the two stores must be equal: ``differences after repair: N`` (``differences before repair`` is the
  drift found after the drains, before the final verification's repair).

Every write whose request raised is remembered too. For a strategy that promises a failed request changed
neither store (``strict``: the capture method's ``all_or_nothing``), ``writes told failed that a store holds:
N of M`` must be 0: no such write's value in either store, no failed delete's key gone (unless a later
acknowledged write put it there); for the others the line is informative.

``--pair pg-redis`` moves the tables from PostgreSQL into a private ``redis-server`` with persistence on (started
for the run like the tests do, :func:`dualwrite.keyvalue.start_redis`; one hash per row, key
``<table>:<key values>``), behind the same fault proxy; the harness reads Redis itself for the checks
(:func:`redis_rows`). Redis takes ``sync``, ``async``, ``strict`` and ``outbox`` (its stream drained by the
RelayWorkflow), written through the adapter (no ``raw`` writer: nothing captures a write that bypasses the
adapter), with Temporal.

``cdc`` needs servers that write a logical WAL (PostgreSQL ``wal_level=logical``) and a ROW binlog
(MariaDB), which the machine's servers lack: such a run starts private instances on free ports
(:mod:`bench.chaos_servers`, with :mod:`dualwrite.cdc.servers` as the cdc tests do) and stops them at the
end. The run's random choices follow ``--rng-seed`` (printed in the first result line); thread and process
timing still differ between two runs of one seed.

The last line is ``differences after repair: N``; the exit status is non-zero when any of the counts checked is not 0,
or when the transition schedule did not complete.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import redis

from bench import chaos_cdc
from bench.chaos_servers import ServerSet, capture_servers, machine_servers
from bench.faultproxy import FaultProxy
from dualwrite import control, outbox, triggers
from dualwrite.adapter import AdapterOptions, DualWriter
from dualwrite.capture import METHODS, method_for
from dualwrite.config import StoreRef, env_var_for
from dualwrite.keyvalue import RedisServer, start_redis
from dualwrite.mapping import TableMapping
from dualwrite.relay import drain, drain_repairs
from dualwrite.repair import repair
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store
from dualwrite.stores import is_redis, open_store
from dualwrite.verify import verify_range

REPO = Path(__file__).resolve().parent.parent
TABLE = "chaos_items"
PAIRS = "chaos_pairs"
DOCS = "chaos_docs"
KEY_SPACE = 10_000_000  # client c inserts integer keys c * KEY_SPACE + n above the seeds, -(c * KEY_SPACE + n) below
CHILD_CLIENT = 99  # the adapter subprocess's key space
REGIONS = ("eu", "us", "ap")  # second part of the composite keys
PG_DDL = f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, name text NOT NULL, n bigint NOT NULL, version bigint NOT NULL)"
MY_DDL = (f"CREATE TABLE {TABLE} (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, n BIGINT NOT NULL, "
          "version BIGINT NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
_PG_REST = "name text NOT NULL, n bigint NOT NULL, version bigint NOT NULL"
_MY_REST = "name VARCHAR(100) NOT NULL, n BIGINT NOT NULL, version BIGINT NOT NULL"
_MY_TAIL = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
DDL: dict[str, dict[str, str]] = {
    # table -> {"pg-old", "my-old", "pg-new"}
    TABLE: {"pg-old": PG_DDL, "my-old": MY_DDL, "pg-new": PG_DDL},
    PAIRS: {"pg-old": f"CREATE TABLE {PAIRS} (a bigint NOT NULL, b varchar(16) NOT NULL, {_PG_REST}, "
                      "PRIMARY KEY (a, b))",
            "my-old": f"CREATE TABLE {PAIRS} (a BIGINT NOT NULL, b VARCHAR(16) NOT NULL, {_MY_REST}, "
                      f"PRIMARY KEY (a, b)){_MY_TAIL}",
            "pg-new": f"CREATE TABLE {PAIRS} (a bigint NOT NULL, b varchar(16) NOT NULL, {_PG_REST}, "
                      "PRIMARY KEY (a, b))"},
    DOCS: {"pg-old": f"CREATE TABLE {DOCS} (id char(36) PRIMARY KEY, {_PG_REST})",
           "my-old": f"CREATE TABLE {DOCS} (id CHAR(36) PRIMARY KEY, {_MY_REST}){_MY_TAIL}",
           "pg-new": f"CREATE TABLE {DOCS} (id uuid PRIMARY KEY, {_PG_REST})",
           "pg-new-char36": f"CREATE TABLE {DOCS} (id char(36) PRIMARY KEY, {_PG_REST})"},
}
KEYS: dict[str, tuple[str, ...]] = {TABLE: ("id",), PAIRS: ("a", "b"), DOCS: ("id",)}
TABLES = (TABLE, PAIRS, DOCS)

Key = tuple[Any, ...]
KeyId = tuple[str, Key]
"""(table, key values in key order): one row of one table."""
Outcome = tuple[Any, ...]
"""("v", name, n): the row holds this write's values; ("d",): the row is absent."""
Row = tuple[Any, ...]
"""(name, n, version) of a stored row."""
DELETED: Outcome = ("d",)


# ---------------------------------------------------------------------------------------------------------
# stores


def fresh_databases(pair: str, tag: str, srv: ServerSet | None = None) -> tuple[str, str]:
    """Create empty old/new databases for one run (on the machine's servers unless ``srv`` says otherwise);
    returns their SQLAlchemy URLs."""
    srv = srv or machine_servers()
    new_url = ""  # pg-redis: the run's own redis-server, started by run()
    if pair != "pg-redis":
        new_db = f"dwchaos_{tag}_new"
        srv.pg_admin(f'DROP DATABASE IF EXISTS "{new_db}"')
        srv.pg_admin(f'CREATE DATABASE "{new_db}"')
        new_url = srv.pg_url(new_db)
    old_db = f"dwchaos_{tag}_old"
    if pair in ("pg-pg", "pg-redis"):
        srv.pg_admin(f'DROP DATABASE IF EXISTS "{old_db}"')
        srv.pg_admin(f'CREATE DATABASE "{old_db}"')
        old_url = srv.pg_url(old_db)
    elif pair == "mariadb-pg":
        srv.my_admin(f"DROP DATABASE IF EXISTS `{old_db}`")
        srv.my_admin(f"CREATE DATABASE `{old_db}` CHARACTER SET utf8mb4")
        old_url = srv.my_url(old_db)
    else:
        raise SystemExit(f"unknown pair {pair!r} (pg-pg, mariadb-pg or pg-redis)")
    return old_url, new_url


def drop_databases(pair: str, tag: str, srv: ServerSet | None = None) -> None:
    srv = srv or machine_servers()
    if srv.private:
        return  # the run's own servers go with their directory
    with contextlib.suppress(Exception):
        srv.pg_admin(f'DROP DATABASE IF EXISTS "dwchaos_{tag}_new" WITH (FORCE)')
    with contextlib.suppress(Exception):
        if pair in ("pg-pg", "pg-redis"):
            srv.pg_admin(f'DROP DATABASE IF EXISTS "dwchaos_{tag}_old" WITH (FORCE)')
        else:
            srv.my_admin(f"DROP DATABASE IF EXISTS `dwchaos_{tag}_old`")


def execute(store: Store, *sqls: str) -> None:
    with store.connect() as conn:
        cur = conn.cursor()
        for sql in sqls:
            cur.execute(sql)
        cur.close()
        conn.commit()


def norm_key(table: str, values: Iterable[Any]) -> Key:
    """Key values as the harness compares them: ints, str (UUIDs lower-case text)."""
    out: list[Any] = []
    for col, v in zip(KEYS[table], values, strict=True):
        if table == DOCS:
            out.append(str(v).strip().lower())
        elif col == "b":
            out.append(str(v))
        else:
            out.append(int(v))
    return tuple(out)


def all_rows(store: Store, tables: Iterable[str] = TABLES) -> dict[KeyId, Row]:
    """Every row of the chaos tables: (table, key) -> (name, n, version)."""
    out: dict[KeyId, Row] = {}
    with store.connect() as conn:
        cur = conn.cursor()
        for table in tables:
            cols = ", ".join(KEYS[table])
            cur.execute(f"SELECT {cols}, name, n, version FROM {table}")
            width = len(KEYS[table])
            for r in cur.fetchall():
                out[(table, norm_key(table, r[:width]))] = (str(r[width]), int(r[width + 1]), int(r[width + 2]))
        cur.close()
        conn.commit()
    return out


def redis_rows(url: str, tables: Iterable[str] = TABLES) -> dict[KeyId, Row]:
    """:func:`all_rows` of a Redis new store: every hash under each table's template (:func:`make_spec`),
    read straight from the server (the key columns are fields of the hash too)."""
    out: dict[KeyId, Row] = {}
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        for table in tables:
            names = sorted(set(client.scan_iter(match=f"{table}:*", count=1000)))
            for i in range(0, len(names), 1000):
                pipe = client.pipeline(transaction=False)
                for name in names[i:i + 1000]:
                    pipe.hgetall(name)
                for h in pipe.execute():
                    key = norm_key(table, [h.get(c) for c in KEYS[table]])
                    out[(table, key)] = (str(h.get("name")), int(h.get("n", -1)), int(h.get("version", -1)))
    finally:
        client.close()
    return out


def rows_of(store: Store) -> dict[KeyId, Row]:
    """Every row of the chaos tables in ``store``, SQL or Redis."""
    return redis_rows(store.url) if is_redis(store) else all_rows(store)


REDIS_KEYS = {TABLE: f"{TABLE}:{{id}}", PAIRS: f"{PAIRS}:{{a}}:{{b}}", DOCS: f"{DOCS}:{{id}}"}


def make_spec(name: str, strategy: str, *, redis_new: bool = False, **kw: Any) -> MigrationSpec:
    layout: Callable[[str], dict[str, Any]] = (lambda t: {"redis": {"key": REDIS_KEYS[t], "value": "hash"}}) \
        if redis_new else (lambda t: {})
    return MigrationSpec.model_validate({
        "name": name, "old": "chaosold", "new": "chaosnew", "strategy": strategy,
        "tables": [{"source": t, "version_column": "version", "batch_size": 200, **layout(t)} for t in TABLES],
        # the run drives every transition itself; the injected faults would trip the automatic rollback
        "rollback_triggers": {"enabled": False}, **kw})


class Mappings:
    """``mapping_for(table, reverse)`` for the harness's relay and repairs, without an adapter instance (a
    raw-writer run has none: an instance would also count in the phase barrier)."""

    def __init__(self, spec: MigrationSpec, old: Store, new: Store) -> None:
        self.spec, self.old, self.new = spec, old, new
        self._cache: dict[str, TableMapping] = {}
        self._lock = threading.Lock()

    def __call__(self, table: str, reverse: bool) -> TableMapping:
        from activities.stores import compile_mapping

        with self._lock:
            forward = self._cache.get(table)
        if forward is None:
            forward = compile_mapping(self.spec, table, self.old, self.new)
            with self._lock:
                self._cache[table] = forward
        return forward.reversed() if reverse else forward


# ---------------------------------------------------------------------------------------------------------
# the acknowledgement log and the checker


@dataclass(frozen=True)
class Told:
    """A write whose request raised: its outcome, and what/when for the report."""

    outcome: Outcome
    op: str
    phase: str
    error: str


@dataclass
class AckLog:
    """Per key: the last acknowledged outcome, and the outcomes of writes after it that failed (uncertain: a
    failed write may or may not have committed, so either is accepted), with the operation and the phase of
    the last acknowledged write (to say which operations lost what). ``path``: also one JSON line per attempt.
    """

    last: dict[KeyId, Outcome] = field(default_factory=dict)
    maybe: dict[KeyId, set[Outcome]] = field(default_factory=dict)
    how: dict[KeyId, tuple[str, str]] = field(default_factory=dict)
    told_failed: dict[KeyId, list[Told]] = field(default_factory=dict)
    """Per key: the writes whose request raised (the application was told they failed), for the check of
    strategies where such a write must have changed neither store (:func:`check_told_failed`)."""
    acked: int = 0
    failed: int = 0
    refusals: int = 0
    by_op: Counter[str] = field(default_factory=Counter)
    attempts_by_phase: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    path: Path | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    _fh: IO[str] | None = None

    def _write(self, rec: dict[str, Any]) -> None:
        if self.path is None:
            return
        if self._fh is None:
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(json.dumps(rec, default=str) + "\n")

    def ack(self, key: KeyId, outcome: Outcome, op: str = "", phase: str = "") -> None:
        with self.lock:
            self.last[key] = outcome
            self.maybe.pop(key, None)
            told = self.told_failed.get(key)
            if told:  # a failed delete before this acknowledged write cannot be told apart from it any more
                told[:] = [t for t in told if t.outcome != DELETED]
            self.how[key] = (op, phase)
            self.acked += 1
            self.by_op[op] += 1
            self.attempts_by_phase[phase] += 1
            self._write({"t": round(time.time(), 4), "table": key[0], "key": list(key[1]), "op": op, "phase": phase,
                         "acked": True, "outcome": list(outcome)})

    def uncertain(self, key: KeyId, outcome: Outcome, *, failed: bool = True, op: str = "", phase: str = "",
                  error: str = "") -> None:
        with self.lock:
            self.maybe.setdefault(key, set()).add(outcome)
            self.failed += int(failed)
            if failed:
                self.attempts_by_phase[phase] += 1
            if error:
                self.errors[error[:120]] += 1
            self._write({"t": round(time.time(), 4), "table": key[0], "key": list(key[1]), "op": op, "phase": phase,
                         "acked": False, "outcome": list(outcome), "error": error[:200]})

    def told(self, key: KeyId, outcome: Outcome, *, op: str = "", phase: str = "", error: str = "") -> None:
        """The request of this write raised: the application was told it failed (counted by
        :meth:`refused` / :meth:`uncertain` as well; this only remembers it for the told-failed check)."""
        with self.lock:
            self.told_failed.setdefault(key, []).append(Told(outcome, op, phase, error[:120]))

    def refused(self, key: KeyId, outcome: Outcome, *, op: str = "", phase: str = "", error: str = "") -> None:
        """A write refused with an error before anything was written: never acknowledged, and not a possible
        outcome either (its value must not show up)."""
        with self.lock:
            self.failed += 1
            self.refusals += 1
            self.attempts_by_phase[phase] += 1
            if error:
                self.errors[error[:120]] += 1
            self._write({"t": round(time.time(), 4), "table": key[0], "key": list(key[1]), "op": op, "phase": phase,
                         "acked": False, "refused": True, "outcome": list(outcome), "error": error[:200]})

    def close(self) -> None:
        with self.lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


@dataclass
class Finding:
    key: KeyId
    kind: str  # "lost" (missing), "reverted" (another value), "resurrected", "failed-present"
    op: str
    phase: str
    error: str = ""


@dataclass
class CheckResult:
    """What the checker found in the authoritative store against the acknowledgement log."""

    checked: int = 0
    lost: int = 0  # the last acknowledged write is not there: the row is missing
    reverted: int = 0  # the row holds another value than the last acknowledged write
    resurrected: int = 0  # an acknowledged delete came back
    told_failed: int = 0  # writes the application was told failed (their request raised)
    failed_present: int = 0  # ... of which a store holds the outcome (check_told_failed)
    findings: list[Finding] = field(default_factory=list)

    @property
    def lost_acknowledged(self) -> int:
        return self.lost + self.reverted

    def by(self, what: str) -> str:
        """Counts of the findings by kind and operation (``what="op"``), phase (``"phase"``) or table."""
        c = Counter(f"{f.kind}/{(f.key[0] if what == 'table' else getattr(f, what)) or '?'}" for f in self.findings)
        return ", ".join(f"{k}={v}" for k, v in sorted(c.items())) or "none"


def check_acknowledged(log: AckLog, authoritative: Mapping[KeyId, Row]) -> CheckResult:
    """Every acknowledged write present in ``authoritative`` with its last acknowledged value; no acknowledged
    delete resurrected. A key's outcome is accepted when the store holds the last acknowledged outcome or the
    outcome of a later write that failed (uncertain)."""
    out = CheckResult()
    for key, outcome in log.last.items():
        out.checked += 1
        allowed = {outcome} | log.maybe.get(key, set())
        row = authoritative.get(key)
        got: Outcome = DELETED if row is None else ("v", row[0], row[1])
        if got in allowed:
            continue
        op, phase = log.how.get(key, ("", ""))
        if outcome == DELETED:
            out.resurrected += 1
            kind = "resurrected"
        elif got == DELETED:
            out.lost += 1
            kind = "lost"
        else:
            out.reverted += 1
            kind = "reverted"
        out.findings.append(Finding(key, kind, op, phase))
    return out


def check_told_failed(log: AckLog, stores: Iterable[Mapping[KeyId, Row]], into: CheckResult) -> None:
    """No write whose request raised is in any of ``stores`` (``strict``: "the request fails unless both
    stores have it", so a failed request must have changed neither). Each write's value is unique, so a row
    holding it can only come from that write. A failed delete counts when its key is absent while the last
    acknowledged write gave it a value (a later acknowledged delete puts the key out of account: it
    forgets the earlier failed delete, see :meth:`AckLog.ack`)."""
    views = list(stores)
    for key, told in log.told_failed.items():
        last = log.last.get(key)
        for t in told:
            into.told_failed += 1
            if t.outcome == DELETED:
                present = last not in (None, DELETED) and any(key not in v for v in views)
            else:
                present = any((row := v.get(key)) is not None and ("v", row[0], row[1]) == t.outcome for v in views)
            if present:
                into.failed_present += 1
                into.findings.append(Finding(key, "failed-present", t.op, t.phase, t.error))


@dataclass
class Differences:
    missing: list[KeyId] = field(default_factory=list)  # in the authoritative store only
    extra: list[KeyId] = field(default_factory=list)  # in the other store only
    different: list[KeyId] = field(default_factory=list)  # in both, other values

    @property
    def total(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.different)

    def text(self) -> str:
        return f"{self.total} ({len(self.missing)} missing, {len(self.extra)} extra, {len(self.different)} different)"


def compare_stores(authoritative: Mapping[KeyId, Row], other: Mapping[KeyId, Row]) -> Differences:
    """The harness's own full comparison of the two stores (name, n and version of every row)."""
    d = Differences()
    for key, row in authoritative.items():
        o = other.get(key)
        if o is None:
            d.missing.append(key)
        elif o != row:
            d.different.append(key)
    d.extra = [k for k in other if k not in authoritative]
    return d


# ---------------------------------------------------------------------------------------------------------
# the writers


class Refused(Exception):  # noqa: N818 - what the writer was told
    """A write that certainly did not happen: it failed before its COMMIT was sent."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


class RawOps:
    """Plain SQL on the old store's tables, one transaction per write: an application that was not changed.
    A write is acknowledged when its COMMIT returned."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.ph = store.paramstyle

    def _where(self, table: str) -> str:
        return " AND ".join(f"{c} = {self.ph}" for c in KEYS[table])

    def _run(self, sql: str, params: tuple[Any, ...]) -> int:
        # an error before COMMIT (no connection, the statement refused) leaves nothing written: the transaction
        # is rolled back, so the write was refused for certain; an error at COMMIT leaves it uncertain
        try:
            cm = self.store.connect()
            conn = cm.__enter__()
        except Exception as exc:
            raise Refused(exc) from exc
        try:
            try:
                cur = conn.cursor()
                cur.execute(sql, params)
                n = int(cur.rowcount)
                cur.close()
            except Exception as exc:
                raise Refused(exc) from exc
            conn.commit()
        except BaseException as exc:
            cm.__exit__(type(exc), exc, exc.__traceback__)
            raise
        cm.__exit__(None, None, None)
        return n

    def insert(self, table: str, key: Key, name: str, n: int, version: int) -> int:
        cols = ", ".join([*KEYS[table], "name", "n", "version"])
        marks = ", ".join([self.ph] * (len(key) + 3))
        return self._run(f"INSERT INTO {table} ({cols}) VALUES ({marks})", (*key, name, n, version))

    def update(self, table: str, key: Key, name: str, n: int, *, bump: bool, version: int) -> int:
        sets = f"name = {self.ph}, n = {self.ph}" + (", version = version + 1" if bump else "")
        return self._run(f"UPDATE {table} SET {sets} WHERE {self._where(table)}", (name, n, *key))

    def delete(self, table: str, key: Key) -> int:
        return self._run(f"DELETE FROM {table} WHERE {self._where(table)}", key)


class AdapterOps:
    """The same operations through a :class:`DualWriter`. An update "without the version" gives the version
    column the value it has (the adapter bumps it only when the application does not set it)."""

    def __init__(self, writer: DualWriter) -> None:
        self.writer = writer

    def insert(self, table: str, key: Key, name: str, n: int, version: int) -> int:
        self.writer.insert(table, {**dict(zip(KEYS[table], key, strict=True)), "name": name, "n": n,
                                   "version": version})
        return 1

    def update(self, table: str, key: Key, name: str, n: int, *, bump: bool, version: int) -> int:
        values: dict[str, Any] = {"name": name, "n": n}
        if not bump:
            values["version"] = version
        return self.writer.update(table, key, values)

    def delete(self, table: str, key: Key) -> int:
        return self.writer.delete(table, key)


@dataclass
class KeyState:
    version: int = 1


class HotKeys:
    """A few keys every client writes, in bursts: each write and its acknowledgement under the key's lock, so
    the last acknowledged write of a hot key is well defined while clients race on the others."""

    def __init__(self, keys: list[KeyId]) -> None:
        self.keys = keys
        self.state = {k: KeyState() for k in keys}
        self.locks = {k: threading.Lock() for k in keys}


OPS = ("insert_high", "insert_low", "update", "update_keep_version", "delete", "delete_reinsert", "hot_burst")
WEIGHTS = (12, 8, 20, 16, 10, 16, 4)


class Client:
    """One writer thread on its own keys (and the shared hot keys): every operation of :data:`OPS`."""

    def __init__(self, cid: int, ops: RawOps | AdapterOps, log: AckLog, owned: list[KeyId], hot: HotKeys,
                 rng: random.Random, phase: Callable[[], str], allowed: Iterable[str] = OPS) -> None:
        self.cid, self.ops, self.log, self.rng, self.hot, self.phase = cid, ops, log, rng, hot, phase
        allowed = set(allowed)
        self.weights = [w if op in allowed else 0 for op, w in zip(OPS, WEIGHTS, strict=True)]
        self.live: dict[KeyId, KeyState] = {k: KeyState() for k in owned}
        self.keys = list(owned)  # live keys, for random choice (stale entries are skipped)
        self.seq = 0
        self.high = 0
        self.low = 0
        self.zero_rows: Counter[str] = Counter()

    # -- keys ------------------------------------------------------------------------------------------

    def new_key(self, table: str, above: bool) -> KeyId:
        if above:
            self.high += 1
            n = self.cid * KEY_SPACE + self.high
        else:
            self.low += 1
            n = -(self.cid * KEY_SPACE + self.low)
        if table == TABLE:
            return (table, (n,))
        if table == PAIRS:
            return (table, (n, REGIONS[self.high % len(REGIONS)]))
        head = "ffff" if above else "0000"
        return (table, (str(uuid.UUID(head + uuid.uuid4().hex[4:])),))

    def pick(self) -> KeyId | None:
        for _ in range(8):
            if not self.keys:
                return None
            i = self.rng.randrange(len(self.keys))
            k = self.keys[i]
            if k in self.live:
                return k
            self.keys[i] = self.keys[-1]
            self.keys.pop()
        return None

    def name(self) -> tuple[str, int]:
        self.seq += 1
        return f"c{self.cid}-{self.seq}-{secrets.token_hex(2)}", self.seq

    # -- one write, logged -----------------------------------------------------------------------------

    def write(self, op: str, key: KeyId, st: KeyState, kind: str) -> str:
        """One write of ``kind`` (insert / update / update_keep_version / delete): "ack" (acknowledged),
        "refused" (certainly not written), "uncertain" (failed, may have committed) or "norow"."""
        table, k = key
        phase = self.phase()
        name, n = self.name()
        outcome: Outcome = DELETED if kind == "delete" else ("v", name, n)
        try:
            if kind == "insert":
                rows = self.ops.insert(table, k, name, n, 1)
            elif kind == "delete":
                rows = self.ops.delete(table, k)
            else:
                rows = self.ops.update(table, k, name, n, bump=kind == "update", version=st.version)
        except Refused as exc:
            error = str(exc).splitlines()[0]
            self.log.told(key, outcome, op=op, phase=phase, error=error)
            self.log.refused(key, outcome, op=op, phase=phase, error=error)
            return "refused"
        except Exception as exc:  # noqa: BLE001 - a failed write: never acknowledged, maybe committed
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            self.log.told(key, outcome, op=op, phase=phase, error=error)
            self.log.uncertain(key, outcome, op=op, phase=phase, error=error)
            if kind == "insert":
                self.log.uncertain(key, DELETED, failed=False, op=op, phase=phase)
            return "uncertain"
        if rows == 0:
            # the authoritative store did not have the row this client wrote and was told was there: the
            # checker finds the loss; this write changed nothing, so it is not a value to look for
            self.zero_rows[kind] += 1
            return "norow"
        if kind == "insert":
            st.version = 1
        elif kind == "update":
            st.version += 1
        self.log.ack(key, outcome, op=op, phase=phase)
        return "ack"

    def step(self) -> None:
        op = self.rng.choices(OPS, self.weights)[0]
        table = self.rng.choice(TABLES)
        if op in ("insert_high", "insert_low") or len(self.live) < 5:
            key = self.new_key(table, op != "insert_low")
            st = KeyState()
            if self.write(op if op.startswith("insert") else "insert_high", key, st, "insert") == "ack":
                self.live[key] = st
                self.keys.append(key)
            return
        if op == "hot_burst":
            key = self.rng.choice(self.hot.keys)
            with self.hot.locks[key]:
                st = self.hot.state[key]
                for _ in range(self.rng.randint(3, 10)):
                    kind = self.rng.choices(["update", "update_keep_version", "delete_reinsert"], [6, 3, 1])[0]
                    if kind == "delete_reinsert":
                        if self.write("hot_delete", key, st, "delete") == "ack":
                            self.write("hot_reinsert", key, st, "insert")
                    else:
                        self.write(f"hot_{kind}", key, st, kind)
            return
        picked = self.pick()
        if picked is None:
            return
        st = self.live[picked]
        if op == "delete":
            outcome = self.write(op, picked, st, "delete")
        elif op == "delete_reinsert":
            outcome = self.write("delete_for_reinsert", picked, st, "delete")
            if outcome == "ack":
                outcome = self.write("reinsert", picked, st, "insert")
                if outcome == "refused":
                    outcome = "gone"  # deleted for certain, not re-inserted
        else:
            outcome = self.write(op, picked, st, "update" if op == "update" else "update_keep_version")
        if (op == "delete" and outcome == "ack") or outcome not in ("ack", "refused"):
            del self.live[picked]  # deleted, or uncertain: leave the key alone from now on


def seed_keys(n: int) -> dict[str, list[Key]]:
    """The rows present before the migration starts (history for the backfill), per table."""
    rng = random.Random(7)
    per = max(3, n)
    return {
        TABLE: [(i,) for i in range(per)],  # 0 included
        PAIRS: [(i // len(REGIONS), REGIONS[i % len(REGIONS)]) for i in range(per)],
        DOCS: [(str(uuid.UUID(int=rng.getrandbits(128), version=4)),) for _ in range(per)],
    }


def insert_seed(store: Store, seeds: Mapping[str, list[Key]]) -> None:
    with store.connect() as conn:
        cur = conn.cursor()
        ph = store.paramstyle
        for table, keys in seeds.items():
            cols = ", ".join([*KEYS[table], "name", "n", "version"])
            marks = ", ".join([ph] * (len(KEYS[table]) + 3))
            cur.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})",
                            [(*k, f"seed-{i}", 0, 1) for i, k in enumerate(keys)])
        cur.close()
        conn.commit()


# ---------------------------------------------------------------------------------------------------------
# the adapter subprocess (killed by the chaos hook right after an authoritative commit)


def child_main(args: argparse.Namespace) -> int:
    """Write through a DualWriter until killed; append "intent" and "ack" lines to ``--log``."""
    spec = MigrationSpec.model_validate_json(Path(args.spec_file).read_text())
    old = Store(StoreRef("chaosold", args.old_url))
    new = open_store(StoreRef("chaosnew", args.new_url))  # PostgreSQL or Redis
    writer = DualWriter(spec, old, new, control_store=old, options=AdapterOptions(
        background=True, phase_ttl=0.2, secondary_timeout=1.0, ensure_schema=False))
    rng = random.Random()
    seq = 0
    live: list[int] = []
    base = CHILD_CLIENT * KEY_SPACE + args.generation * 100_000 + 1
    deadline = time.monotonic() + args.max_seconds
    with open(args.log, "a", encoding="utf-8") as fh:
        while time.monotonic() < deadline:
            seq += 1
            name = f"child{args.generation}-{seq}"
            op = rng.random()
            try:
                if op < 0.4 or len(live) < 3:
                    key, outcome, what = base + seq, ["v", name, seq], "insert"
                    fh.write(json.dumps(["intent", key, outcome, what]) + "\n")
                    fh.flush()
                    writer.insert(TABLE, {"id": key, "name": name, "n": seq, "version": 1})
                    live.append(key)
                elif op < 0.75:
                    key, outcome, what = rng.choice(live), ["v", name, seq], "update"
                    fh.write(json.dumps(["intent", key, outcome, what]) + "\n")
                    fh.flush()
                    writer.update(TABLE, key, {"name": name, "n": seq})
                else:
                    key, outcome, what = live.pop(rng.randrange(len(live))), ["d"], "delete"
                    fh.write(json.dumps(["intent", key, outcome, what]) + "\n")
                    fh.flush()
                    writer.delete(TABLE, key)
            except Exception as exc:  # noqa: BLE001 - a refused write: its intent stays unacknowledged
                if what != "insert" and key in live:
                    live.remove(key)
                fh.write(json.dumps(["fail", key, outcome, what, type(exc).__name__]) + "\n")
                fh.flush()
                continue
            fh.write(json.dumps(["ack", key, outcome, what]) + "\n")
            fh.flush()
            time.sleep(0.01)
    writer.close()
    return 0


def read_child_log(path: Path, log: AckLog) -> None:
    """Fold the adapter subprocesses' log into ``log``: an intent without its ack is uncertain."""
    if not path.exists():
        return
    pending: dict[KeyId, Outcome] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            key: KeyId = (TABLE, (int(rec[1]),))
            outcome = tuple(rec[2])
        except (ValueError, IndexError, TypeError):
            continue  # a line torn by the kill
        if rec[0] == "intent":
            if key in pending:  # an earlier intent that failed (refused) and was never acknowledged
                log.uncertain(key, pending[key], failed=True, op="child")
            pending[key] = outcome
        elif rec[0] == "fail":  # the request raised: the child was told it failed
            log.told(key, outcome, op=f"child_{rec[3]}", error=str(rec[4]) if len(rec) > 4 else "")
        else:
            pending.pop(key, None)
            log.ack(key, outcome, op=f"child_{rec[3] if len(rec) > 3 else 'write'}")
    for key, outcome in pending.items():
        log.uncertain(key, outcome, failed=False, op="child")
        if outcome != DELETED and key not in log.last:
            log.uncertain(key, DELETED, failed=False, op="child")  # an insert that may not have committed


# ---------------------------------------------------------------------------------------------------------
# Temporal: dev server (restarted once) and worker processes (SIGKILLed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TemporalSide:
    """A dev server with a persistent db file, worker.py subprocesses and one MigrationWorkflow."""

    def __init__(self, workdir: Path, store_env: dict[str, str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.ui_port = free_port()
        self.db = workdir / "temporal.db"
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.queue = f"dwchaos-{secrets.token_hex(3)}"
        self.kills = 0
        self.server_restarts = 0
        self.final_phase = "?"
        (workdir / "none.yaml").write_text("stores: {}\n")
        self.env = {**os.environ, **store_env, "DUALWRITE_TEMPORAL_ADDRESS": f"127.0.0.1:{self.port}",
                    "DUALWRITE_NAMESPACE": "default", "DUALWRITE_TASK_QUEUE": self.queue,
                    "DUALWRITE_CONFIG": str(workdir / "none.yaml"), "DUALWRITE_MAX_ACTIVITIES": "4",
                    "DUALWRITE_SHUTDOWN_SECONDS": "2"}
        self.env.pop("DUALWRITE_CHAOS_HOOKS", None)
        self.hooks_file = workdir / "worker-hooks.json"
        self.hooks_file.write_text("{}")
        self.env["DUALWRITE_CHAOS_HOOKS"] = str(self.hooks_file)  # inert until the harness writes rules
        self.hook_kills = 0

    def respawn_dead(self) -> int:
        """Replace workers that died on their own (a chaos hook killed them); returns how many."""
        dead = [w for w in self.workers if w.poll() is not None and w.returncode == -signal.SIGKILL
                and not getattr(w, "_counted", False)]
        for w in dead:
            w._counted = True  # type: ignore[attr-defined]
            self.hook_kills += 1
            self.start_worker()
        if self.hook_kills >= 2:
            self.hooks_file.write_text("{}")  # at most twice per run: enough kills, and the copy must finish
        return len(dead)

    def start_server(self) -> None:
        from workflows.models import SEARCH_ATTRIBUTE_CLI_ARGS

        exe = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
        args = [exe, "server", "start-dev", "--db-filename", str(self.db), "--ip", "127.0.0.1",
                "--port", str(self.port), "--headless", "--log-level", "error"]
        for sa_arg in SEARCH_ATTRIBUTE_CLI_ARGS:
            args += ["--search-attribute", sa_arg]
        out = (self.workdir / "temporal.log").open("ab")
        self.server = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.2)
        raise RuntimeError("the Temporal dev server did not start")

    def restart_server(self) -> None:
        if self.server is not None:
            self.server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.server.wait(15)
            if self.server.poll() is None:
                self.server.kill()
                self.server.wait(5)
        self.start_server()
        self.server_restarts += 1

    def start_worker(self) -> None:
        out = (self.workdir / "workers.log").open("ab")
        self.workers.append(subprocess.Popen([sys.executable, str(REPO / "worker.py")], env=self.env, cwd=REPO,
                                             stdout=out, stderr=subprocess.STDOUT))

    def kill_worker(self) -> None:
        alive = [w for w in self.workers if w.poll() is None]
        if not alive:
            return
        victim = alive[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        victim._counted = True  # type: ignore[attr-defined]
        self.kills += 1
        self.start_worker()

    async def start_migration(self, spec: MigrationSpec) -> Any:
        from temporalio.client import Client

        from dualwrite.codec import data_converter
        from starter.client import start_migration
        from workflows.models import MigrationInput, Tuning

        client = await Client.connect(f"127.0.0.1:{self.port}", data_converter=data_converter())
        tuning = Tuning(heartbeat_timeout_seconds=5, barrier_poll_seconds=5, gate_recheck_seconds=5,
                        repair_idle_seconds=5, verify_heartbeat_seconds=10)
        return await start_migration(client, MigrationInput(spec=spec, started_by="bench.chaos", tuning=tuning),
                                     task_queue=self.queue)

    async def start_relay(self, spec: MigrationSpec) -> None:
        """outbox / triggers: the RelayWorkflow mirrors logged keys on the workers (killed like the rest)."""
        from temporalio.client import Client

        from dualwrite.codec import data_converter
        from workflows.relay import RelayInput, relay_workflow_id

        client = await Client.connect(f"127.0.0.1:{self.port}", data_converter=data_converter())
        await client.start_workflow("RelayWorkflow", RelayInput(spec=spec, poll_seconds=0.2,
                                                                heartbeat_timeout_seconds=5, max_activity_seconds=10),
                                    id=relay_workflow_id(spec.name), task_queue=self.queue)

    async def terminate(self, workflow_prefix: str) -> None:
        from temporalio.client import Client

        from dualwrite.codec import data_converter
        from workflows.models import MigrationStatus

        client = await Client.connect(f"127.0.0.1:{self.port}", data_converter=data_converter())
        handle = client.get_workflow_handle(f"dualwrite-{workflow_prefix}")
        for attempt in range(5):
            # a query can meet a workflow task that just failed and is being retried (a worker killed, an
            # UnhandledCommand): ask again before reporting; a task that keeps failing is still reported
            try:
                st = await asyncio.wait_for(handle.query("status", result_type=MigrationStatus), 10)
                self.final_phase = f"{st.phase} (waiting for: {st.waiting_for or '-'})"
                break
            except Exception as exc:  # noqa: BLE001 - a figure for the printout only
                self.final_phase = f"? ({type(exc).__name__}: {exc}; after {attempt + 1} attempts)"[:200]
                await asyncio.sleep(2.0)
        async for w in client.list_workflows('ExecutionStatus="Running"'):
            if w.id.startswith(workflow_prefix) or workflow_prefix in w.id:
                with contextlib.suppress(Exception):
                    await client.get_workflow_handle(w.id, run_id=w.run_id).terminate("chaos run over")

    def stop(self) -> None:
        for w in self.workers:
            if w.poll() is None:
                w.send_signal(signal.SIGKILL)
                w.wait(10)
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.server.wait(15)
            if self.server.poll() is None:
                self.server.kill()

    def worker_pids(self) -> set[int]:
        return {w.pid for w in self.workers if w.poll() is None}

    def kill_pid(self, pid: int) -> bool:
        """SIGKILL the worker process ``pid`` (one of ours) and start a replacement."""
        for w in self.workers:
            if w.pid == pid and w.poll() is None:
                w.send_signal(signal.SIGKILL)
                w.wait(10)
                w._counted = True  # type: ignore[attr-defined]
                self.kills += 1
                self.start_worker()
                return True
        return False

    async def running_activities(self, client: Any, workflow_ids: list[str]) -> list[tuple[int, str, float]]:
        """(worker pid, activity type, seconds a dead worker's attempt takes to be retried) of every pending
        activity of the workflows and their open children (backfill, verification, relay), from the identity
        of the worker that runs it (pid 0: not started yet) and its heartbeat (else start-to-close) timeout."""
        from temporalio.api.enums.v1 import PendingActivityState

        ids = list(workflow_ids)
        seen: set[str] = set()
        found: list[tuple[int, str, float]] = []
        while ids:
            wid = ids.pop()
            if wid in seen:
                continue
            seen.add(wid)
            try:
                desc = await client.get_workflow_handle(wid).describe()
            except Exception:  # noqa: BLE001, S112 - a child that just closed
                continue
            raw = desc.raw_description
            for a in raw.pending_activities:
                opts = a.activity_options
                cost = float(opts.heartbeat_timeout.seconds or opts.start_to_close_timeout.seconds or 0)
                if a.state != PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
                    found.append((0, a.activity_type.name, cost))  # any worker may pick it up next
                    continue
                with contextlib.suppress(ValueError):
                    pid = int(a.last_worker_identity.rsplit(":", 1)[-1])
                    if pid in self.worker_pids():
                        found.append((pid, a.activity_type.name, cost))
            ids += [c.workflow_id for c in raw.pending_children]
        return found


# ---------------------------------------------------------------------------------------------------------
# the phase driver: every transition while the writers write, workers killed inside the steps


@dataclass(frozen=True)
class Step:
    action: str  # advance | rollback | restart (the Temporal dev server)
    to: str = ""
    at: float = 0.0  # when, as a fraction of the run
    force: bool = False
    kill: tuple[str, ...] = ()  # activity types: the worker running the first one seen is SIGKILLed
    label: str = ""


_SWITCH = ("relay_catch_up", "verify_table", "drain_repairs", "relay_drain")
SCHEDULE = (
    Step("advance", "DUAL_WRITE", 0.0),
    Step("advance", "BACKFILL", 0.02, kill=("copy_range",), label="backfill"),
    Step("advance", "SHADOW_READ", 0.2, kill=("verify_table",), label="verification"),
    Step("restart", at=0.3),
    Step("advance", "CUTOVER_READS", 0.35, force=True),
    Step("advance", "CUTOVER_WRITES", 0.45, force=True, kill=_SWITCH, label="authority switch"),
    Step("rollback", "CUTOVER_READS", 0.65, kill=_SWITCH, label="rollback"),
    Step("advance", "CUTOVER_WRITES", 0.8, force=True),
)
SLOW_RETRY_SECONDS = 60.0
"""A worker running an activity whose attempt is retried only after longer than this is not killed."""
STEP_SECONDS = 240.0
"""How long one step may take (refusals retried, phase work included) before the run gives up on it."""


@dataclass
class DriveLog:
    done: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    kills: list[str] = field(default_factory=list)
    missed_kills: list[str] = field(default_factory=list)
    verifications: list[str] = field(default_factory=list)
    work_failures: list[str] = field(default_factory=list)
    slow_activities: dict[str, float] = field(default_factory=dict)
    step_seconds: list[str] = field(default_factory=list)
    error: str = ""
    finished: bool = False
    final_phase: str = "?"


def _settled(waiting_for: str) -> bool:
    return waiting_for == "" or waiting_for.startswith(("operator", "gate", "auto")) or "work failed" in waiting_for


async def drive(side: TemporalSide, spec: MigrationSpec, started: float, seconds: float, log: DriveLog,
                say: Callable[[str], None], worker_kills: int, stop: threading.Event) -> None:
    """Run :data:`SCHEDULE` against the MigrationWorkflow (started here)."""
    from temporalio.client import Client as TClient

    from dualwrite.codec import data_converter
    from workflows.models import MigrationStatus, Phase, TransitionRequest, TransitionResult
    from workflows.relay import relay_workflow_id

    method = method_for(spec.strategy)
    if method.relayed and not method.reads_database_log:
        # the harness's relay, with short polls; the migration starts one itself otherwise. Not for cdc: a
        # relay started before the migration creates the slots, and PREPARE's preflight refuses a slot that
        # exists already (it cannot tell it from one a crashed run left behind)
        await side.start_relay(spec)
    await side.start_migration(spec)
    wid = f"dualwrite-{spec.name}"

    async def connect() -> Any:
        deadline = time.monotonic() + 60
        while True:
            try:
                return await TClient.connect(f"127.0.0.1:{side.port}", data_converter=data_converter())
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    client = await connect()

    async def status() -> MigrationStatus:
        nonlocal client
        for attempt in range(60):
            side.respawn_dead()
            try:
                st: MigrationStatus = await asyncio.wait_for(
                    client.get_workflow_handle(wid).query("status", result_type=MigrationStatus), 15)
                return st
            except Exception:  # noqa: BLE001 - workers or the server (re)starting
                await asyncio.sleep(1.0)
                if attempt % 10 == 9:
                    client = await connect()
        raise RuntimeError("the migration does not answer its status query")

    async def settle(deadline: float) -> MigrationStatus:
        while True:
            st = await status()
            if st.waiting_for.startswith("nothing: failed"):
                raise RuntimeError(f"the migration failed: {st.waiting_for}"[:400])
            if _settled(st.waiting_for):
                return st
            if time.monotonic() > deadline:
                raise RuntimeError(f"phase {st.phase} did not settle: waiting for {st.waiting_for}")
            await asyncio.sleep(0.2)

    async def killer(step: Step) -> None:
        # the step's own activities first (a catch-up or verification of the switch); after a few seconds
        # also the long-running ones beside it (the relay, the repair drain). A worker that also runs an
        # activity Temporal would retry only after minutes (no short heartbeat timeout) is spared: the kill
        # would stall the run for that long and prove nothing more; such activities are reported
        since = time.monotonic()
        while True:
            wanted = step.kill if time.monotonic() - since > 3.0 else step.kill[:2]
            running = await side.running_activities(client, [wid, relay_workflow_id(spec.name)])
            slow = {pid for pid, _, cost in running if cost > SLOW_RETRY_SECONDS}
            if 0 in slow:  # a slow one waits for a worker: the victim could take it in the meantime
                await asyncio.sleep(0.05)
                continue
            for _pid, kind, cost in running:
                if cost > SLOW_RETRY_SECONDS and kind not in log.slow_activities:
                    log.slow_activities[kind] = cost
            found = sorted(((pid, kind) for pid, kind, _ in running if kind in wanted and pid and pid not in slow),
                           key=lambda f: step.kill.index(f[1]))
            if found and side.kill_pid(found[0][0]):
                log.kills.append(f"{step.label} ({found[0][1]})")
                say(f"worker {found[0][0]} SIGKILLed during the {step.label} (it ran {found[0][1]})")
                return
            await asyncio.sleep(0.05)

    kills_left = worker_kills
    last_verification = None
    for step in SCHEDULE:
        if stop.is_set():
            break
        while time.monotonic() < started + seconds * step.at and not stop.is_set():
            await asyncio.sleep(0.1)
        deadline = time.monotonic() + STEP_SECONDS
        step_started = time.monotonic()
        if step.action == "restart":
            await asyncio.to_thread(side.restart_server)
            client = await connect()
            say("temporal dev server restarted")
            log.done.append("server restart")
            continue
        st = await settle(deadline)
        kill_task: asyncio.Task[None] | None = None
        if step.kill and kills_left > 0:
            kills_left -= 1
            kill_task = asyncio.create_task(killer(step))
        try:
            while True:
                req = TransitionRequest(to=Phase(step.to), by="bench.chaos", force=step.force,
                                        reason=f"chaos run: {step.action} {step.to}")
                try:
                    res = await client.get_workflow_handle(wid).execute_update(step.action, req,
                                                                               result_type=TransitionResult)
                except Exception as exc:  # noqa: BLE001 - a worker killed under the update: ask again
                    res = None
                    msg = f"{type(exc).__name__}: {exc}"
                else:
                    msg = res.message
                if res is not None and res.ok:
                    break
                st = await status()
                if st.phase == step.to and _settled(st.waiting_for):
                    break  # an update accepted before the error that reached us
                log.refusals.append(f"{step.action} {step.to}: {msg}"[:300])
                say(f"{step.action} to {step.to} refused: {msg}"[:300])
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{step.action} to {step.to} refused until the deadline: {msg}"[:400])
                await asyncio.sleep(1.0)
            st = await settle(deadline)
        finally:
            if kill_task is not None:
                if not kill_task.done():
                    kill_task.cancel()
                    log.missed_kills.append(step.label)
                with contextlib.suppress(asyncio.CancelledError):
                    await kill_task
        if "work failed" in st.waiting_for:
            log.work_failures.append(st.waiting_for[:300])
        v = st.last_verification
        if v is not None and v != last_verification:
            last_verification = v
            log.verifications.append(_verification_line(v))
        log.done.append(f"{'rollback to ' if step.action == 'rollback' else ''}{step.to}"
                        f"{' (forced)' if step.force else ''}")
        log.step_seconds.append(f"{log.done[-1]} {time.monotonic() - step_started:.0f}s")
        say(f"phase {st.phase}{' (after rollback)' if step.action == 'rollback' else ''}")
    log.finished = not stop.is_set()


def _verification_line(v: Any) -> str:
    return (f"{v.direction} {v.verdict if v.ok else 'NOT ok'}: compared {v.rows_compared}, missing {v.missing}, "
            f"extra {v.extra}, field-different {v.field_different}, repaired {v.repaired}")


async def final_verification(side: TemporalSide, spec: MigrationSpec, log: DriveLog) -> str:
    """With the writes stopped and the logs drained: the workflow's own full verification with repair (its
    direction is the product's: new -> old once the new store is authoritative). Returns the final phase."""
    from temporalio.client import Client as TClient

    from dualwrite.codec import data_converter
    from workflows.models import MigrationStatus, TransitionRequest, TransitionResult

    client = await TClient.connect(f"127.0.0.1:{side.port}", data_converter=data_converter())
    handle = client.get_workflow_handle(f"dualwrite-{spec.name}")
    st: MigrationStatus = await handle.query("status", result_type=MigrationStatus)
    before = st.counters.get("verifications", 0) if isinstance(st.counters, dict) else 0
    res = await handle.execute_update("verify", TransitionRequest(by="bench.chaos", reason="end of the chaos run"),
                                      result_type=TransitionResult)
    if not res.ok:
        raise RuntimeError(f"verify refused: {res.message}")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        side.respawn_dead()
        st = await handle.query("status", result_type=MigrationStatus)
        done = st.counters.get("verifications", 0) if isinstance(st.counters, dict) else 0
        if done > before and st.last_verification is not None:
            log.verifications.append("final " + _verification_line(st.last_verification))
            return str(st.phase)
        await asyncio.sleep(0.5)
    raise RuntimeError("the final verification did not finish within 180 s")


# ---------------------------------------------------------------------------------------------------------
# the run


@dataclass
class Result:
    label: str = ""
    acknowledged: int = 0
    failed_requests: int = 0
    refused: int = 0
    acked_by_op: Counter[str] = field(default_factory=Counter)
    attempts_by_phase: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    zero_rows: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    worker_kills: int = 0
    adapter_kills: int = 0
    server_restarts: int = 0
    relayed: int = 0
    repaired_from_queue: int = 0
    recopied: int = 0
    drive: DriveLog = field(default_factory=DriveLog)
    temporal: bool = True
    final_phase: str = "?"
    authoritative: str = "old"
    before: Differences = field(default_factory=Differences)
    after: Differences | None = None
    check: CheckResult = field(default_factory=CheckResult)
    all_or_nothing: bool = False  # the strategy promises that a request that raised changed neither store
    rows: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def differences_after(self) -> int:
        return -1 if self.after is None else self.after.total

    @property
    def schedule_complete(self) -> bool:
        return not self.temporal or (self.drive.finished and not self.drive.error)

    @property
    def ok(self) -> bool:
        return self.differences_after == 0 and self.check.lost_acknowledged == 0 and self.check.resurrected == 0 \
            and self.schedule_complete and not (self.all_or_nothing and self.check.failed_present)

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        ops = ", ".join(f"{k}={v}" for k, v in sorted(self.acked_by_op.items())) or "none"
        d = self.drive
        out = [
            f"chaos run: {self.label}",
            f"writes acknowledged: {self.acknowledged}",
            f"acknowledged by operation: {ops}",
            f"failed requests (refused or failed, not acknowledged): {self.failed_requests}"
            f" (refused before commit: {self.refused})",
            "writes attempted by phase: " + (", ".join(f"{k or '?'}={v}" for k, v in sorted(
                self.attempts_by_phase.items())) or "none"),
            *[f"error seen by the writers: {n} x {e}" for e, n in self.errors.most_common(4)],
            f"faults injected by kind: {kinds}",
            f"worker kills: {self.worker_kills}",
            f"worker kills inside steps: {', '.join(d.kills) or 'none'}"
            + (f" (missed: {', '.join(d.missed_kills)})" if d.missed_kills else ""),
            "activities a killed worker stalls for over a minute (their workers were spared): "
            + (", ".join(f"{k} ({v:.0f} s)" for k, v in sorted(d.slow_activities.items())) or "none"),
            f"adapter process kills: {self.adapter_kills}",
            f"temporal server restarts: {self.server_restarts}",
            f"transitions: {', '.join(d.done) or 'none'}",
            f"step durations: {', '.join(d.step_seconds) or 'none'}",
            f"transition refusals: {len(d.refusals)}",
            *[f"refused: {r}" for r in d.refusals[:6]],
            *[f"phase work failed: {w}" for w in d.work_failures[:4]],
            *[f"verification: {v}" for v in d.verifications],
            f"schedule: {'complete' if self.schedule_complete else 'INCOMPLETE'}"
            + (f" ({d.error})" if d.error else ""),
            f"final phase: {self.final_phase} (authoritative: {self.authoritative})",
            f"keys relayed: {self.relayed}, keys repaired from the queue: {self.repaired_from_queue}",
            f"rows in the final comparison: {self.rows}",
            f"rows re-copied: {self.recopied}",
            f"writes that found no row: {', '.join(f'{k}={v}' for k, v in sorted(self.zero_rows.items())) or 'none'}",
            f"acknowledged writes checked: {self.check.checked}",
            f"lost acknowledged writes by operation: {self.check.by('op')}",
            f"lost acknowledged writes by phase: {self.check.by('phase')}",
            f"lost acknowledged writes by table: {self.check.by('table')}",
            *[f"note: {n}" for n in self.notes],
            f"differences before repair: {self.before.total}",
            f"lost acknowledged writes: {self.check.lost_acknowledged} (missing {self.check.lost}, "
            f"reverted {self.check.reverted})",
            f"resurrected deletes: {self.check.resurrected}",
            f"writes told failed that a store holds: {self.check.failed_present} of {self.check.told_failed}"
            + (" (checked: the strategy fails a request only when neither store has it)" if self.all_or_nothing
               else " (informative: the strategy does not promise it)"),
            f"differences after repair: {self.differences_after}",
        ]
        return out


def describe(diff: Differences, log: AckLog, when: str, limit: int = 8) -> list[str]:
    """Differences by kind, table and the operation that last acknowledged the key (no row values)."""
    c: Counter[str] = Counter()
    lines: list[str] = []
    for kind, keys in (("missing", diff.missing), ("extra", diff.extra), ("different", diff.different)):
        for key in keys:
            op, phase = log.how.get(key, ("-", "-"))
            c[f"{kind}/{key[0]}/{op}"] += 1
            if len(lines) < limit:
                lines.append(f"  {when}: {kind} {key[0]} key {list(key[1])}: last acknowledged by {op} in {phase}")
    return [f"differences {when} by kind/table/operation: " + (", ".join(f"{k}={v}" for k, v in sorted(c.items()))
                                                               or "none"), *lines]


def worker_troubles(path: Path, limit: int = 3) -> list[str]:
    """Failed workflow tasks and activities that kept failing, from the workers' JSON log: why a step did not
    settle (a workflow task failing is a stuck migration, not a slow one)."""
    found: Counter[str] = Counter()
    first: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            event = str(rec.get("event", ""))
            exc = str(rec.get("exception", "")).strip().splitlines()
            if "activation" in event.lower() or "workflow task" in event.lower() or "nondetermin" in event.lower():
                key = f"workflow task of {rec.get('workflow_type', '?')}: {event[:80]}"
                detail = exc[-1][:300] if exc else event[80:600]
            elif event.startswith("activity ") and " failed " in event:
                key = f"activity {rec.get('activity_type', '?')} failed"
                detail = event.split(": ", 1)[-1][:200]
            else:
                continue
            found[key] += 1
            first.setdefault(key, detail)
    ranked = sorted(found.items(), key=lambda kv: (not kv[0].startswith("workflow task"), -kv[1]))[:limit]
    return [f"worker log: {n} x {k}" + (f" ({first[k]})" if first[k] else "") for k, n in ranked]


def _harness_repair(auth: Store, other: Store, mapping_for: Callable[[str, bool], TableMapping],
                    reverse: bool) -> int:
    """Verify and repair every table from the authoritative store (no Temporal: the reconciliation)."""
    fixed = 0
    for table in TABLES:
        mapping = mapping_for(table, reverse)
        report = verify_range(auth, other, mapping, allow_empty=True, max_differences=100_000)
        if not report.ok:
            fixed += repair(auth, other, mapping, report).repaired_keys
    return fixed


def _await_stream_drained(url: str, migration: str, seconds: float) -> None:
    """pg-redis outbox: wait until the relay has mirrored (and deleted) every entry of the Redis outbox stream."""
    import redis

    from dualwrite.keyvalue import stream_outbox

    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + seconds
        while stream_outbox.depth(client, stream_outbox.stream_key(migration))[0] and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        client.close()


def run(*, seconds: float, pair: str, strategy: str, writer_kind: str = "adapter", clients: int = 4,
        seed_rows: int = 1000, temporal: bool = True, adapter_kills: int = 2, worker_kills: int = 4,
        keep: bool = False, rng_seed: int | None = None, verbose: bool = True, ack_log: Path | None = None,
        ops_allowed: Iterable[str] = OPS, new_uuid_type: str = "uuid", write_interval: float = 0.005,
        servers_dir: Path | None = None) -> Result:
    method = method_for(strategy)
    if rng_seed is None:
        rng_seed = secrets.randbelow(1 << 31)  # printed, so that a run that finds something can be repeated
    rng = random.Random(rng_seed)
    ops_allowed = list(ops_allowed)
    only = ("" if set(ops_allowed) == set(OPS) else f" ops={','.join(ops_allowed)}") + (
        "" if new_uuid_type == "uuid" else f" new-uuid-type={new_uuid_type}")
    res = Result(label=f"{pair} {strategy} writer={writer_kind} {seconds:.0f}s{only} seed={rng_seed}",
                 temporal=temporal, all_or_nothing=method.all_or_nothing)
    tag = f"{pair.replace('-', '')}_{strategy}_{secrets.token_hex(2)}"
    redis_new = pair == "pg-redis"
    if redis_new and (writer_kind != "adapter" or not temporal or method.key_log not in (None, outbox.OUTBOX)
                      or method.reads_database_log):
        raise SystemExit("--pair pg-redis runs --strategy sync, async, outbox or strict, --writer adapter, with "
                         "Temporal")
    # log capture needs servers that write a logical WAL / a ROW binlog: the run starts its own
    srv = capture_servers(pair, servers_dir) if method.reads_database_log else machine_servers()
    try:
        old_url, new_url = fresh_databases(pair, tag, srv)
    except BaseException:
        srv.close(keep=keep)
        raise
    workdir = Path(tempfile.mkdtemp(prefix="dwchaos-"))
    redis_server: RedisServer | None = None
    if redis_new:  # persistence on (AOF): the new store is authoritative after write cutover
        redis_server = start_redis(workdir / "redis")
        new_url = redis_server.url
        proxy = FaultProxy("127.0.0.1", redis_server.port, delay=0.05)
    else:
        proxy = FaultProxy(srv.pg.host, srv.pg.port, delay=0.05)
    proxy.start()
    proxied_new = proxy.url_for(new_url)
    name = f"chaos-{tag}".replace("_", "-")
    spec = make_spec(name, strategy, redis_new=redis_new, mode="manual")

    def new_store(url: str) -> Store:
        store = open_store(StoreRef("chaosnew", url))
        for t in spec.tables if is_redis(store) else ():
            store.lay_out(t)  # type: ignore[attr-defined]  # a RedisStore opened by URL learns its tables
        return store

    old = Store(StoreRef("chaosold", old_url))
    new_direct = new_store(new_url)
    new = new_store(proxied_new)
    relay_old, relay_new = Store(StoreRef("chaosold", old_url)), new_store(proxied_new)
    check_old, check_new = Store(StoreRef("chaosold", old_url)), new_store(new_url)
    for s in (relay_old, relay_new, check_old, check_new):
        if not is_redis(s):
            triggers.mark_replica(s)
    log = AckLog(path=ack_log)
    stop = threading.Event()
    writes_stop = threading.Event()
    side: TemporalSide | None = None
    writer: DualWriter | None = None
    stores: list[Store] = [old, new_direct, new, relay_old, relay_new, check_old, check_new]
    phase_now = ["PREPARE"]

    def say(msg: str) -> None:
        if verbose:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    try:
        flavour = "my-old" if pair == "mariadb-pg" else "pg-old"
        execute(old, *(DDL[t][flavour] for t in TABLES))
        if not redis_new:
            execute(new_direct, *(DDL[t]["pg-new-char36" if t == DOCS and new_uuid_type == "char36" else "pg-new"]
                                  for t in TABLES))
        control.ensure_schema(old)
        seeds = seed_keys(seed_rows)
        insert_seed(old, seeds)
        for table, keys in seeds.items():
            for i, k in enumerate(keys):
                log.last[(table, norm_key(table, k))] = ("v", f"seed-{i}", 0)
                log.how[(table, norm_key(table, k))] = ("seed", "PREPARE")
        if not temporal:  # no workflow to backfill them: start from a completed copy
            insert_seed(new_direct, seeds)
        if method.key_log == outbox.CHANGELOG:  # capture before the first write, as the relay's setup does
            for t in TABLES:
                triggers.install_triggers(old, name, t, list(KEYS[t]))
        if method.reads_database_log and not temporal:
            # with Temporal the relay's setup starts capture (the preflight refuses a slot it did not make);
            # writes before that are the backfill's history
            chaos_cdc.setup(relay_old, relay_new, old, name, TABLES)
        mapping_for = Mappings(spec, relay_old, relay_new)
        if writer_kind == "adapter":
            writer = DualWriter(spec, old, new, control_store=old, options=AdapterOptions(
                background=True, phase_ttl=0.2, secondary_timeout=1.0, recheck_delay=0.1))
            ops: RawOps | AdapterOps = AdapterOps(writer)
        else:
            ops = RawOps(old)

        if not temporal:
            control.publish_state(old, name, "DUAL_WRITE", 1)
            if writer is not None:
                writer.phase.refresh(force=True)

        def watch_phase() -> None:
            while not stop.is_set():
                with contextlib.suppress(Exception):
                    state = control.read_state(check_old, name)
                    if state is not None:
                        phase_now[0] = state.phase + (" (fenced)" if control.FENCE in state.overrides else "")
                stop.wait(0.1)

        threading.Thread(target=watch_phase, daemon=True).start()

        # the writers: seed keys split among the clients by position, a few hot keys shared by all
        all_seed = [(t, norm_key(t, k)) for t in TABLES for k in seeds[t]]
        hot = HotKeys([(t, norm_key(t, seeds[t][i])) for t in TABLES for i in (1, 2)])
        rest = [k for k in all_seed if k not in hot.state]
        writer_clients = [Client(i + 1, ops, log, rest[i::clients], hot, random.Random(rng.random()),
                                 lambda: phase_now[0], ops_allowed) for i in range(clients)]

        def client_loop(c: Client) -> None:
            while not writes_stop.is_set():
                c.step()
                time.sleep(rng.uniform(0.0, 2 * write_interval))

        threads = [threading.Thread(target=client_loop, args=(c,), daemon=True) for c in writer_clients]

        def relay_loop() -> None:
            while not writes_stop.is_set():
                try:
                    if method.key_log is not None:
                        r = drain(relay_old, relay_new, name, mapping_for, control_store=old, max_seconds=2)
                        res.relayed += r.mirrored
                    elif method.reads_database_log:
                        res.relayed += chaos_cdc.drain(relay_old, relay_new, old, name, mapping_for,
                                                       phase_now[0].split()[0], max_seconds=2)
                    d = drain_repairs(old, relay_old, relay_new, name, mapping_for, max_rounds=2,
                                      base_backoff_seconds=0.5, max_backoff_seconds=3)
                    res.repaired_from_queue += d.mirrored
                except Exception:  # noqa: BLE001, S110 - the store is down: try again
                    pass
                writes_stop.wait(0.3)

        # without Temporal the harness relays; with it, the RelayWorkflow on the workers is the only relay
        relay_thread = threading.Thread(target=relay_loop, daemon=True) if not temporal else None

        drive_thread: threading.Thread | None = None
        started = time.monotonic()
        if temporal:
            side = TemporalSide(workdir, {env_var_for("chaosold"): old_url, env_var_for("chaosnew"): proxied_new})
            side.start_server()
            side.start_worker()
            side.start_worker()
            # a pause right after each publish of a new phase (the flip) widens the window in which writes
            # meet the new authority before the workflow moves on. No kill hooks: a hook kills whichever
            # worker hits it, also one planning a backfill (an activity retried only after 10 minutes); the
            # driver kills workers inside the steps itself (see drive)
            side.hooks_file.write_text(json.dumps({"phase.after_flip": {"action": "pause", "seconds": 0.5}}))
            say(f"temporal dev server on :{side.port}, 2 workers")
            started = time.monotonic()
            t_side = side

            def drive_main() -> None:
                try:
                    asyncio.run(drive(t_side, spec, started, seconds, res.drive, say, worker_kills, stop))
                except Exception as exc:  # noqa: BLE001 - reported; the checks still run
                    res.drive.error = f"{type(exc).__name__}: {exc}"[:400]
                    say(f"driver: {res.drive.error}")

            drive_thread = threading.Thread(target=drive_main, daemon=True)
        for th in threads:
            th.start()
        if relay_thread is not None:
            relay_thread.start()
        if drive_thread is not None:
            drive_thread.start()

        # the adapter subprocess
        child_log = workdir / "child.jsonl"
        spec_file = workdir / "spec.json"
        spec_file.write_text(spec.model_dump_json())
        hooks_file = workdir / "hooks.json"
        hooks_file.write_text(json.dumps({"adapter.after_primary_commit": {"action": "kill", "probability": 0.03}}))
        child_gen = 0
        child: subprocess.Popen[bytes] | None = None

        def spawn_child() -> subprocess.Popen[bytes]:
            nonlocal child_gen
            child_gen += 1
            env = {**os.environ, "DUALWRITE_CHAOS_HOOKS": str(hooks_file)}
            return subprocess.Popen(
                [sys.executable, "-m", "bench.chaos", "--child", "--old-url", old_url, "--new-url", proxied_new,
                 "--spec-file", str(spec_file), "--log", str(child_log), "--generation", str(child_gen),
                 "--max-seconds", str(seconds + 600)],
                cwd=REPO, env=env, stdout=(workdir / "child.log").open("ab"), stderr=subprocess.STDOUT)

        if adapter_kills > 0 and writer_kind == "adapter":
            child = spawn_child()

        # the fault schedule, until the run's time is up and the transition schedule is done
        end = started + seconds
        cap = end + len(SCHEDULE) * STEP_SECONDS
        while True:
            now = time.monotonic()
            driving = drive_thread is not None and drive_thread.is_alive()
            if now >= cap or (now >= end and not driving):
                break
            if child is not None and child.poll() is not None:
                if child.returncode == -signal.SIGKILL:
                    res.adapter_kills += 1
                    res.faults["adapter-kill"] += 1
                child = spawn_child() if res.adapter_kills < adapter_kills else None
            if side is not None and side.respawn_dead():
                say("a worker died on its own and was replaced")
            if temporal and not res.drive.done and driving:
                time.sleep(0.2)  # no fault before DUAL_WRITE: a preflight that cannot reach a store fails PREPARE
                continue
            # outages of a few seconds with quiet gaps between them, so phase work (verifications, the
            # drains under the write fence) can finish between two faults, as in a bad but working network
            kind = rng.choice(["refuse", "blackhole", "delay", "cut", "none"])
            if kind == "cut":
                proxy.cut()
                res.faults["cut"] += 1
            elif kind != "none":
                outage = rng.uniform(1.0, 3.0)
                proxy.set_mode(kind)
                res.faults[kind] += 1
                say(f"secondary: {kind} for {outage:.1f}s")
                time.sleep(outage)
                proxy.set_mode("ok")
            time.sleep(rng.uniform(2.0, 5.0))
        if drive_thread is not None and drive_thread.is_alive():
            stop.set()
            drive_thread.join(30)
            if not res.drive.error:
                res.drive.error = "the transition schedule did not finish in time"
        proxy.set_mode("ok")
        time.sleep(1.0)  # a last second of writes in the final phase, with no fault

        # -- writes stop --------------------------------------------------------------------------------
        say("writes stop; reconciliation")
        writes_stop.set()
        for th in threads:
            th.join(30)
        if relay_thread is not None:
            relay_thread.join(30)
            threads.append(relay_thread)
        stuck = [th.name for th in threads if th.is_alive()]
        if stuck:
            res.notes.append(f"threads still running after writes stopped: {', '.join(stuck)}")
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(10)
            if child.poll() is None:
                child.kill()
                child.wait(5)
        if writer is not None:
            writer.close()
        read_child_log(child_log, log)
        log.close()
        for c in writer_clients:
            res.zero_rows.update(c.zero_rows)
        res.acknowledged, res.failed_requests, res.refused = log.acked, log.failed, log.refusals
        res.acked_by_op, res.errors, res.attempts_by_phase = log.by_op, log.errors, log.attempts_by_phase

        # -- reconciliation: drain the key logs and the repair queue -----------------------------------
        execute(old, f"UPDATE {control.REPAIR_QUEUE} SET next_attempt_at = next_attempt_at - INTERVAL '1' DAY")
        state = control.read_state(check_old, name)
        drain_until = time.monotonic() + 120  # a capture that cannot catch up is reported, not waited for
        for _ in range(5):
            if method.key_log is not None:
                # a Redis new store's outbox is a stream, not a SQL log: the running RelayWorkflow drains it
                res.relayed += drain(relay_old, relay_new, name, mapping_for, control_store=old, max_seconds=60,
                                     directions=("old",) if redis_new else ("old", "new")).mirrored
                if redis_new:
                    _await_stream_drained(new_url, name, 120)
            elif method.reads_database_log:  # the relay (or the harness) applies the log up to its end now
                res.relayed += chaos_cdc.drain(relay_old, relay_new, old, name, mapping_for,
                                               state.phase if state is not None else "PREPARE",
                                               max_seconds=max(1.0, drain_until - time.monotonic()))
            res.repaired_from_queue += drain_repairs(old, relay_old, relay_new, name, mapping_for,
                                                     base_backoff_seconds=0.1, max_backoff_seconds=0.1).mirrored
            if control.repair_queue_depth(old, name) == 0:
                break
        state = control.read_state(check_old, name)
        res.final_phase = state.phase if state is not None else "?"
        new_auth = res.final_phase in ("CUTOVER_WRITES", "CLEANUP", "DONE")
        res.authoritative = "new" if new_auth else "old"

        def stores_now() -> tuple[dict[KeyId, Row], dict[KeyId, Row]]:
            o, n = all_rows(check_old), rows_of(check_new)
            return (n, o) if new_auth else (o, n)

        auth_rows, other_rows = stores_now()
        res.before = compare_stores(auth_rows, other_rows)
        if res.before.total:
            res.notes += describe(res.before, log, "before repair")

        # -- repair: the workflow's own final verification (or, without Temporal, the harness's) ------------
        repaired_by_harness = False
        if side is not None:
            try:
                res.final_phase = asyncio.run(final_verification(side, spec, res.drive))
                v = res.drive.verifications[-1] if res.drive.verifications else ""
                with contextlib.suppress(ValueError, IndexError):
                    res.recopied = int(v.rsplit("repaired ", 1)[1].split()[0])
            except Exception as exc:  # noqa: BLE001 - reported; the harness repairs instead
                res.notes.append(f"the workflow's final verification failed ({type(exc).__name__}: {exc}); "
                                 "the harness repaired from the authoritative store instead"[:400])
                repaired_by_harness = True
            with contextlib.suppress(Exception):
                asyncio.run(side.terminate(name))
            res.worker_kills = side.kills + side.hook_kills
            if side.hook_kills:
                res.faults["worker-hook-kill"] = side.hook_kills
            res.server_restarts = side.server_restarts
            res.notes += worker_troubles(side.workdir / "workers.log")
            side.stop()
        else:
            repaired_by_harness = True
        if repaired_by_harness:
            auth_store, other_store = (check_new, check_old) if new_auth else (check_old, check_new)
            res.recopied = _harness_repair(auth_store, other_store, mapping_for, reverse=new_auth)

        # -- the checks: the harness reads both stores itself ---------------------------------------------
        auth_rows, other_rows = stores_now()
        res.rows = len(auth_rows)
        res.after = compare_stores(auth_rows, other_rows)
        if res.after.total:
            res.notes += describe(res.after, log, "after repair")
        res.check = check_acknowledged(log, auth_rows)
        check_told_failed(log, (auth_rows, other_rows), res.check)
        for f in res.check.findings[:8]:
            res.notes.append(f"{f.kind}: {f.key[0]} key {list(f.key[1])}, " + (
                f"written by {f.op} in {f.phase}, told: {f.error}" if f.kind == "failed-present"
                else f"last acknowledged by {f.op} in {f.phase}"))
        return res
    finally:
        stop.set()
        writes_stop.set()
        proxy.stop()
        if side is not None:
            side.stop()
        for s in stores:
            with contextlib.suppress(Exception):
                s.dispose()
        if redis_server is not None:
            redis_server.stop()
        if not keep:
            drop_databases(pair, tag, srv)
            srv.close()
            if not res.ok and (workdir / "workers.log").exists():
                # the evidence of a failed run outlives it: the workers' and the server's logs (no row data)
                logs = Path(tempfile.gettempdir()) / f"dwchaos-logs-{tag}"
                logs.mkdir(exist_ok=True)
                for log_name in ("workers.log", "temporal.log", "child.log"):
                    with contextlib.suppress(OSError):
                        shutil.copy(workdir / log_name, logs / log_name)
                print(f"logs of the failed run: {logs}", flush=True)
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept: databases dwchaos_{tag}_old/_new, files {workdir}"
                  + (f", servers under {srv.root} (python -m dualwrite.cdc.servers stop DIR)" if srv.private else ""),
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--seconds", type=float, default=45.0)
    ap.add_argument("--pair", default="pg-pg", choices=["pg-pg", "mariadb-pg", "pg-redis"])
    ap.add_argument("--strategy", default="sync", choices=list(METHODS))
    ap.add_argument("--writer", default=None, choices=["adapter", "raw"],
                    help="adapter: through a DualWriter (default where the strategy needs the adapter); raw: "
                         "plain SQL to the old store's tables, no adapter (default for triggers and cdc, and "
                         "only for a strategy that captures in the database)")
    ap.add_argument("--servers-dir", type=Path, default=None,
                    help="cdc: the private capture servers' directory (reused when they still run; default a "
                         "fresh temporary one, stopped and removed at the end)")
    ap.add_argument("--ack-log", type=Path, default=None, help="also write every attempted write (JSON lines)")
    ap.add_argument("--ops", default=",".join(OPS),
                    help=f"comma-separated operations the writers use (default all: {','.join(OPS)})")
    ap.add_argument("--new-uuid-type", default="uuid", choices=["uuid", "char36"],
                    help="the CHAR(36) key column of chaos_docs becomes this type on the new store")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--write-interval-ms", type=float, default=5.0, help="mean pause of a client between writes")
    ap.add_argument("--seed-rows", type=int, default=1000, help="rows per table before the migration starts")
    ap.add_argument("--no-temporal", action="store_true", help="no workflow: DUAL_WRITE only, the harness repairs")
    ap.add_argument("--adapter-kills", type=int, default=2)
    ap.add_argument("--worker-kills", type=int, default=4,
                    help="workers SIGKILLed inside the steps (backfill, verification, authority switch, rollback)")
    ap.add_argument("--keep", action="store_true", help="keep the databases and files for inspection")
    ap.add_argument("--rng-seed", type=int, default=None)
    ap.add_argument("--quiet", action="store_true")
    # the adapter subprocess
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--old-url", help=argparse.SUPPRESS)
    ap.add_argument("--new-url", help=argparse.SUPPRESS)
    ap.add_argument("--spec-file", help=argparse.SUPPRESS)
    ap.add_argument("--log", help=argparse.SUPPRESS)
    ap.add_argument("--generation", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--max-seconds", type=float, default=600, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("dualwrite").setLevel(logging.CRITICAL)  # one line per failed secondary write: too many
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)  # resets of connections the proxy cut
    logging.getLogger("psycopg").setLevel(logging.CRITICAL)  # pipelines on connections the proxy cut
    if args.child:
        return child_main(args)
    method = method_for(args.strategy)
    writer_kind = args.writer or ("adapter" if method.through_adapter else "raw")
    if writer_kind == "raw" and not method.database_capture:
        ap.error(f"--writer raw writes around the adapter: --strategy {args.strategy} does not capture such "
                 f"writes (only {', '.join(m.name for m in METHODS.values() if m.database_capture)} do)")
    ops_allowed = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = sorted(set(ops_allowed) - set(OPS))
    if unknown or not ops_allowed:
        ap.error(f"--ops: unknown operations {unknown} (known: {', '.join(OPS)})")
    seconds = args.minutes * 60 if args.minutes is not None else args.seconds
    res = run(seconds=seconds, pair=args.pair, strategy=args.strategy, writer_kind=writer_kind,
              clients=args.clients, seed_rows=args.seed_rows, temporal=not args.no_temporal,
              adapter_kills=args.adapter_kills, worker_kills=args.worker_kills, keep=args.keep,
              rng_seed=args.rng_seed, verbose=not args.quiet, ack_log=args.ack_log, ops_allowed=ops_allowed,
              new_uuid_type=args.new_uuid_type, write_interval=args.write_interval_ms / 1000,
              servers_dir=args.servers_dir)
    for line in res.lines():
        print(line, flush=True)
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
