"""Chaos convergence run: random writers through the adapter while faults are injected, then reconciliation
and a full comparison of both stores.

    python -m bench.chaos --minutes 2 --pair pg-pg|mariadb-pg --strategy sync|outbox|triggers [--no-temporal]

What runs, for ``--seconds`` (or ``--minutes``):

- ``--clients`` writer threads through one :class:`DualWriter` (about a third each inserts, updates and
  deletes, each client on its own keys), logging every acknowledged write with its last value/deletion;
- the secondary (new) store behind a loopback :class:`~bench.faultproxy.FaultProxy` that refuses, delays,
  cuts and black-holes connections, with outages of several seconds;
- the relay (outbox/triggers) as the RelayWorkflow on the workers (with ``--temporal``) *and* in the harness,
  and the repair-queue drain in the harness, all through the same proxy;
- an adapter *process* whose writes die by SIGKILL right after an authoritative commit (chaos hook
  ``adapter.after_primary_commit``), respawned each time;
- unless ``--no-temporal``: a Temporal dev server (persistent ``--db-filename``) restarted once, real
  ``worker.py`` processes killed with SIGKILL several times, and the MigrationWorkflow backfilling the
  seed rows while the writers run.

At the end writes stop, faults stop, reconciliation runs (relay + repair queue drained, full verify, repair),
and a final full comparison must find 0 differences; every acknowledged write must be present with its
last value and no deleted row may come back. The last line is ``differences after repair: N``; the exit
status is non-zero when N > 0 or an acknowledged write is missing.
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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.faultproxy import FaultProxy
from dualwrite import control, triggers
from dualwrite.adapter import AdapterOptions, DualWriter
from dualwrite.config import StoreRef, env_var_for
from dualwrite.relay import drain, drain_repairs
from dualwrite.repair import repair
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store
from dualwrite.verify import VerifyReport, verify_range

REPO = Path(__file__).resolve().parent.parent
TABLE = "chaos_items"
PG_HOST, PG_PORT = "127.0.0.1", 5432
MY_HOST, MY_PORT = "127.0.0.1", 3306
KEY_SPACE = 10_000_000  # client c writes keys c * KEY_SPACE + n
CHILD_CLIENT = 99  # the adapter subprocess's key space
PG_DDL = f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, name text NOT NULL, n bigint NOT NULL, version bigint NOT NULL)"
MY_DDL = (f"CREATE TABLE {TABLE} (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, n BIGINT NOT NULL, "
          "version BIGINT NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")


# ---------------------------------------------------------------------------------------------------------
# stores


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(f"host={PG_HOST} port={PG_PORT} dbname=postgres", autocommit=True) as c:
        c.execute(sql)


def _my_admin(sql: str) -> None:
    import MySQLdb

    conn = MySQLdb.connect(host=MY_HOST, port=MY_PORT, user="root", autocommit=True)
    try:
        conn.cursor().execute(sql)
    finally:
        conn.close()


def fresh_databases(pair: str, tag: str) -> tuple[str, str]:
    """Create empty old/new databases for one run; returns their SQLAlchemy URLs."""
    new_db = f"dwchaos_{tag}_new"
    _pg_admin(f'DROP DATABASE IF EXISTS "{new_db}"')
    _pg_admin(f'CREATE DATABASE "{new_db}"')
    new_url = f"postgresql+psycopg://root@{PG_HOST}:{PG_PORT}/{new_db}"
    old_db = f"dwchaos_{tag}_old"
    if pair == "pg-pg":
        _pg_admin(f'DROP DATABASE IF EXISTS "{old_db}"')
        _pg_admin(f'CREATE DATABASE "{old_db}"')
        old_url = f"postgresql+psycopg://root@{PG_HOST}:{PG_PORT}/{old_db}"
    elif pair == "mariadb-pg":
        _my_admin(f"DROP DATABASE IF EXISTS `{old_db}`")
        _my_admin(f"CREATE DATABASE `{old_db}` CHARACTER SET utf8mb4")
        old_url = f"mysql+mysqldb://root@{MY_HOST}:{MY_PORT}/{old_db}"
    else:
        raise SystemExit(f"unknown pair {pair!r} (pg-pg or mariadb-pg)")
    return old_url, new_url


def drop_databases(pair: str, tag: str) -> None:
    with contextlib.suppress(Exception):
        _pg_admin(f'DROP DATABASE IF EXISTS "dwchaos_{tag}_new" WITH (FORCE)')
    with contextlib.suppress(Exception):
        if pair == "pg-pg":
            _pg_admin(f'DROP DATABASE IF EXISTS "dwchaos_{tag}_old" WITH (FORCE)')
        else:
            _my_admin(f"DROP DATABASE IF EXISTS `dwchaos_{tag}_old`")


def execute(store: Store, *sqls: str) -> None:
    with store.connect() as conn:
        cur = conn.cursor()
        for sql in sqls:
            cur.execute(sql)
        cur.close()
        conn.commit()


def all_rows(store: Store) -> dict[int, tuple[str, int]]:
    with store.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT id, name, n FROM {TABLE}")
        out = {int(r[0]): (str(r[1]), int(r[2])) for r in cur.fetchall()}
        cur.close()
        conn.commit()
    return out


def make_spec(name: str, strategy: str, **kw: Any) -> MigrationSpec:
    return MigrationSpec.model_validate({
        "name": name, "old": "chaosold", "new": "chaosnew", "strategy": strategy,
        "tables": [{"source": TABLE, "version_column": "version", "batch_size": 200}], **kw})


# ---------------------------------------------------------------------------------------------------------
# the random writer and its log of acknowledged writes


@dataclass
class AckLog:
    """Per key: the last acknowledged outcome ("v", name) or ("d",), and keys whose last write is uncertain
    (failed on the primary, or in flight when the process died): either outcome is acceptable there."""

    last: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    maybe: dict[int, set[tuple[Any, ...]]] = field(default_factory=dict)
    acked: int = 0
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ack(self, key: int, outcome: tuple[Any, ...]) -> None:
        with self.lock:
            self.last[key] = outcome
            self.maybe.pop(key, None)
            self.acked += 1

    def uncertain(self, key: int, outcome: tuple[Any, ...], *, failed: bool = True) -> None:
        with self.lock:
            self.maybe.setdefault(key, set()).add(outcome)
            self.failed += int(failed)


class Client:
    """One writer thread: inserts, updates and deletes (about a third each) on its own keys."""

    def __init__(self, cid: int, writer: DualWriter, log: AckLog, seed_keys: list[int], rng: random.Random) -> None:
        self.cid, self.writer, self.log, self.rng = cid, writer, log, rng
        self.live = list(seed_keys)
        self.next = cid * KEY_SPACE + 1
        self.seq = 0

    def step(self) -> None:
        self.seq += 1
        op = self.rng.random()
        name = f"c{self.cid}-{self.seq}-{secrets.token_hex(2)}"
        w = self.writer
        if op < 0.34 or len(self.live) < 5:
            key = self.next
            self.next += 1
            try:
                w.insert(TABLE, {"id": key, "name": name, "n": self.seq, "version": 1})
            except Exception:
                self.log.uncertain(key, ("v", name))
                self.log.uncertain(key, ("d",), failed=False)
                return
            self.live.append(key)
            self.log.ack(key, ("v", name))
        elif op < 0.67:
            key = self.rng.choice(self.live)
            try:
                w.update(TABLE, key, {"name": name, "n": self.seq})
            except Exception:
                self.log.uncertain(key, ("v", name))
                return
            self.log.ack(key, ("v", name))
        else:
            key = self.live.pop(self.rng.randrange(len(self.live)))
            try:
                w.delete(TABLE, key)
            except Exception:
                self.log.uncertain(key, ("d",))
                return
            self.log.ack(key, ("d",))


# ---------------------------------------------------------------------------------------------------------
# the adapter subprocess (killed by the chaos hook right after an authoritative commit)


def child_main(args: argparse.Namespace) -> int:
    """Write through a DualWriter until killed; append "intent" and "ack" lines to ``--log``."""
    spec = MigrationSpec.model_validate_json(Path(args.spec_file).read_text())
    old = Store(StoreRef("chaosold", args.old_url))
    new = Store(StoreRef("chaosnew", args.new_url))
    writer = DualWriter(spec, old, new, control_store=old, options=AdapterOptions(
        background=True, phase_ttl=0.2, secondary_timeout=1.0, ensure_schema=False))
    rng = random.Random()  # noqa: S311 - test data
    seq = 0
    live: list[int] = []
    base = CHILD_CLIENT * KEY_SPACE + args.generation * 100_000 + 1
    deadline = time.monotonic() + args.max_seconds
    with open(args.log, "a", encoding="utf-8") as fh:
        while time.monotonic() < deadline:
            seq += 1
            name = f"child{args.generation}-{seq}"
            op = rng.random()
            if op < 0.4 or len(live) < 3:
                key, outcome = base + seq, ["v", name]
                fh.write(json.dumps(["intent", key, outcome, "insert"]) + "\n")
                fh.flush()
                writer.insert(TABLE, {"id": key, "name": name, "n": seq, "version": 1})
                live.append(key)
            elif op < 0.75:
                key, outcome = rng.choice(live), ["v", name]
                fh.write(json.dumps(["intent", key, outcome, "update"]) + "\n")
                fh.flush()
                writer.update(TABLE, key, {"name": name, "n": seq})
            else:
                key, outcome = live.pop(rng.randrange(len(live))), ["d"]
                fh.write(json.dumps(["intent", key, outcome, "delete"]) + "\n")
                fh.flush()
                writer.delete(TABLE, key)
            fh.write(json.dumps(["ack", key, outcome]) + "\n")
            fh.flush()
            time.sleep(0.01)
    writer.close()
    return 0


def read_child_log(path: Path, log: AckLog) -> None:
    """Fold the adapter subprocesses' log into ``log``: an intent without its ack is uncertain."""
    if not path.exists():
        return
    pending: dict[int, tuple[Any, ...]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line torn by the kill
        key, outcome = int(rec[1]), tuple(rec[2])
        if rec[0] == "intent":
            pending[key] = outcome
        else:
            pending.pop(key, None)
            log.ack(key, outcome)
    for key, outcome in pending.items():
        log.uncertain(key, outcome, failed=False)
        if outcome != ("d",) and key not in log.last:
            log.uncertain(key, ("d",), failed=False)  # an insert that may not have committed


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
        from temporalio.contrib.pydantic import pydantic_data_converter

        from workflows.client import start_migration
        from workflows.models import MigrationInput, Tuning

        client = await Client.connect(f"127.0.0.1:{self.port}", data_converter=pydantic_data_converter)
        tuning = Tuning(heartbeat_timeout_seconds=5, barrier_poll_seconds=5, gate_recheck_seconds=5,
                        repair_idle_seconds=5)
        return await start_migration(client, MigrationInput(spec=spec, started_by="bench.chaos", tuning=tuning),
                                     task_queue=self.queue)

    async def start_relay(self, spec: MigrationSpec) -> None:
        """outbox / triggers: the RelayWorkflow mirrors logged keys on the workers (killed like the rest)."""
        from temporalio.client import Client
        from temporalio.contrib.pydantic import pydantic_data_converter

        from workflows.relay import RelayInput, relay_workflow_id

        client = await Client.connect(f"127.0.0.1:{self.port}", data_converter=pydantic_data_converter)
        await client.start_workflow("RelayWorkflow", RelayInput(spec=spec, poll_seconds=0.2,
                                                                heartbeat_timeout_seconds=5, max_activity_seconds=10),
                                    id=relay_workflow_id(spec.name), task_queue=self.queue)

    async def terminate(self, workflow_prefix: str) -> None:
        from temporalio.client import Client
        from temporalio.contrib.pydantic import pydantic_data_converter

        from workflows.models import MigrationStatus

        client = await Client.connect(f"127.0.0.1:{self.port}", data_converter=pydantic_data_converter)
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


# ---------------------------------------------------------------------------------------------------------
# the run


@dataclass
class Result:
    acknowledged: int = 0
    failed_requests: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    worker_kills: int = 0
    adapter_kills: int = 0
    server_restarts: int = 0
    relayed: int = 0
    repaired_from_queue: int = 0
    recopied: int = 0
    differences_before: int = 0
    differences_after: int = -1
    missing_acked: int = 0
    resurrected: int = 0
    wrong_value: int = 0
    rows: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.differences_after == 0 and self.missing_acked == 0 and self.resurrected == 0 \
            and self.wrong_value == 0

    def lines(self, label: str) -> list[str]:
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        return [
            f"chaos run: {label}",
            f"writes acknowledged: {self.acknowledged}",
            f"failed requests (primary): {self.failed_requests}",
            f"faults injected by kind: {kinds}",
            f"worker kills: {self.worker_kills}",
            f"adapter process kills: {self.adapter_kills}",
            f"temporal server restarts: {self.server_restarts}",
            f"keys relayed: {self.relayed}, keys repaired from the queue: {self.repaired_from_queue}",
            f"rows in the final comparison: {self.rows}",
            f"rows re-copied: {self.recopied}",
            f"acknowledged writes missing: {self.missing_acked}, wrong value: {self.wrong_value}, "
            f"deleted rows back: {self.resurrected}",
            *[f"note: {n}" for n in self.notes],
            f"differences before repair: {self.differences_before}",
            f"differences after repair: {self.differences_after}",
        ]


def describe_differences(report: VerifyReport, log: AckLog, when: str, limit: int = 12) -> list[str]:
    """The differences of a verification by kind and by whose key it is, and the first few key by key
    (kind, differing column names, what the writer was told): enough to tell a lost write, an unfinished
    backfill or a late writer apart without printing row values."""
    owners: Counter[str] = Counter()
    lines = []
    for i, d in enumerate(report.differences):
        key = int(d.key[0])
        last = log.last.get(key, ("-",))
        if key < KEY_SPACE:
            owner = "untouched seed" if last == ("v", f"seed-{key}") else "seed"
        else:
            owner = "adapter process" if key // KEY_SPACE == CHILD_CLIENT else f"client {key // KEY_SPACE}"
        owners[f"{owner} {d.kind.value}"] += 1
        if i < limit:
            maybe = sorted(o[0] for o in log.maybe.get(key, set()))
            cols = ",".join(f.name for f in d.fields)
            lines.append(f"  key {key} ({owner}): {d.kind.value}{f' [{cols}]' if cols else ''}, "
                         f"last ack {last[0]}, uncertain {maybe or '-'}")
    summary = ", ".join(f"{k}={v}" for k, v in sorted(owners.items()))
    return [f"differences {when}: {summary}", *lines]


def _full_verify(old: Store, new: Store, writer: DualWriter) -> VerifyReport:
    return verify_range(old, new, writer.mapping_for(TABLE, False), allow_empty=True, max_differences=100_000)


def run(*, seconds: float, pair: str, strategy: str, clients: int = 4, seed_rows: int = 3000,
        temporal: bool = True, adapter_kills: int = 2, worker_kills: int = 3, keep: bool = False,
        rng_seed: int | None = None, verbose: bool = True) -> Result:
    rng = random.Random(rng_seed)  # noqa: S311 - test data
    res = Result()
    tag = f"{pair.replace('-', '')}_{strategy}_{secrets.token_hex(2)}"
    old_url, new_url = fresh_databases(pair, tag)
    workdir = Path(tempfile.mkdtemp(prefix="dwchaos-"))
    proxy = FaultProxy(PG_HOST, PG_PORT, delay=0.05)
    proxy.start()
    proxied_new = proxy.url_for(new_url)
    old = Store(StoreRef("chaosold", old_url))
    new_direct = Store(StoreRef("chaosnew", new_url))
    new = Store(StoreRef("chaosnew", proxied_new))
    relay_old, relay_new = Store(StoreRef("chaosold", old_url)), Store(StoreRef("chaosnew", proxied_new))
    triggers.mark_replica(relay_old)
    triggers.mark_replica(relay_new)
    name = f"chaos-{tag}".replace("_", "-")
    spec = make_spec(name, strategy, mode="manual")
    log = AckLog()
    stop = threading.Event()
    side: TemporalSide | None = None
    stores: list[Store] = [old, new_direct, new, relay_old, relay_new]

    def say(msg: str) -> None:
        if verbose:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    try:
        execute(old, MY_DDL if pair == "mariadb-pg" else PG_DDL)
        execute(new_direct, PG_DDL)
        control.ensure_schema(old)
        # seed rows (history for the backfill), owned by the clients by id % clients
        with old.connect() as conn:
            cur = conn.cursor()
            ph = old.paramstyle
            cur.executemany(f"INSERT INTO {TABLE} (id, name, n, version) VALUES ({ph}, {ph}, {ph}, 1)",
                            [(i, f"seed-{i}", 0) for i in range(1, seed_rows + 1)])
            cur.close()
            conn.commit()
        for i in range(1, seed_rows + 1):
            log.last[i] = ("v", f"seed-{i}")
        if not temporal:  # no workflow to backfill them: start from a completed copy
            with new_direct.connect() as conn:
                cur = conn.cursor()
                cur.executemany(f"INSERT INTO {TABLE} (id, name, n, version) VALUES (%s, %s, %s, 1)",
                                [(i, f"seed-{i}", 0) for i in range(1, seed_rows + 1)])
                cur.close()
                conn.commit()
        if strategy == "triggers":
            triggers.install_triggers(old, name, TABLE, ["id"])
        writer = DualWriter(spec, old, new, control_store=old, options=AdapterOptions(
            background=True, phase_ttl=0.2, secondary_timeout=1.0, recheck_delay=0.1))
        mapping_for = writer.mapping_for

        if temporal:
            side = TemporalSide(workdir, {env_var_for("chaosold"): old_url, env_var_for("chaosnew"): proxied_new})
            side.start_server()
            side.start_worker()
            side.start_worker()
            # a worker killed by its own hook right after a backfill batch commit (at most twice per run)
            side.hooks_file.write_text(json.dumps({
                "copy.after_batch_commit": {"action": "kill", "probability": 0.15, "times": 1},
                "phase.after_flip": {"action": "pause", "seconds": 0.5}}))
            say(f"temporal dev server on :{side.port}, 2 workers")
        # the writers follow DUAL_WRITE; the workflow (when any) backfills the seed rows meanwhile
        control.publish_state(old, name, "DUAL_WRITE", 1000)
        writer.phase.refresh(force=True)
        if side is not None:
            try:
                asyncio.run(_start_and_backfill(side, spec))
            except Exception as exc:  # noqa: BLE001 - the run goes on; reconciliation still proves convergence
                res.notes.append(f"workflow not driven into BACKFILL: {type(exc).__name__}: {exc}"[:300])

        def client_loop(c: Client) -> None:
            while not stop.is_set():
                c.step()
                time.sleep(rng.uniform(0.0, 0.01))

        owned: list[list[int]] = [[k for k in range(1, seed_rows + 1) if k % clients == i] for i in range(clients)]
        threads = [threading.Thread(target=client_loop, args=(Client(i + 1, writer, log, owned[i],
                                                                      random.Random(rng.random())),), daemon=True)
                   for i in range(clients)]

        def relay_loop() -> None:
            while not stop.is_set():
                try:
                    if strategy in ("outbox", "triggers"):
                        r = drain(relay_old, relay_new, name, mapping_for, control_store=old, max_seconds=2)
                        res.relayed += r.mirrored
                    d = drain_repairs(old, relay_old, relay_new, name, mapping_for, max_rounds=2,
                                      base_backoff_seconds=0.5, max_backoff_seconds=3)
                    res.repaired_from_queue += d.mirrored
                except Exception:  # noqa: BLE001, S110 - the store is down: try again
                    pass
                stop.wait(0.3)

        relay_thread = threading.Thread(target=relay_loop, daemon=True)
        for t in threads:
            t.start()
        relay_thread.start()

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
                 "--max-seconds", str(seconds + 30)],
                cwd=REPO, env=env, stdout=(workdir / "child.log").open("ab"), stderr=subprocess.STDOUT)

        if adapter_kills > 0:
            child = spawn_child()

        # the fault schedule: outages of several seconds, cuts, delays; kills and one server restart
        started = time.monotonic()
        end = started + seconds
        restart_at = started + seconds * 0.5 if side is not None else None
        kill_times = sorted(started + seconds * (i + 1) / (worker_kills + 1) for i in range(worker_kills))
        while time.monotonic() < end:
            now = time.monotonic()
            if child is not None and child.poll() is not None:
                if child.returncode == -signal.SIGKILL:
                    res.adapter_kills += 1
                    res.faults["adapter-kill"] += 1
                child = spawn_child() if res.adapter_kills < adapter_kills else None
            if side is not None and side.respawn_dead():
                say("worker killed by the copy.after_batch_commit hook")
            if side is not None and kill_times and now >= kill_times[0]:
                kill_times.pop(0)
                side.kill_worker()
                res.faults["worker-sigkill"] += 1
                say("worker killed (SIGKILL)")
            if side is not None and restart_at is not None and now >= restart_at:
                restart_at = None
                side.restart_server()
                res.faults["temporal-restart"] += 1
                say("temporal dev server restarted")
            kind = rng.choice(["refuse", "blackhole", "delay", "cut", "none"])
            left = max(0.0, end - time.monotonic())
            if kind == "cut":
                proxy.cut()
                res.faults["cut"] += 1
                stop.wait(min(left, rng.uniform(0.5, 1.5)))
            elif kind == "none":
                stop.wait(min(left, rng.uniform(1.0, 3.0)))
            else:
                outage = min(left, rng.uniform(2.0, 5.0) if kind != "delay" else rng.uniform(1.0, 3.0))
                proxy.set_mode(kind)
                res.faults[kind] += 1
                say(f"secondary: {kind} for {outage:.1f}s")
                time.sleep(outage)
                proxy.set_mode("ok")
                stop.wait(min(max(0.0, end - time.monotonic()), rng.uniform(0.5, 1.5)))

        # -- writes stop --------------------------------------------------------------------------------
        say("writes stop; reconciliation")
        stop.set()
        for t in threads:
            t.join(30)
        relay_thread.join(30)
        stuck = [t.name for t in [*threads, relay_thread] if t.is_alive()]
        if stuck:
            res.notes.append(f"threads still running after writes stopped: {', '.join(stuck)}")
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(10)
            if child.poll() is None:
                child.kill()
                child.wait(5)
        proxy.set_mode("ok")
        writer.close()
        if side is not None:
            with contextlib.suppress(Exception):
                asyncio.run(side.terminate(name))
            res.worker_kills = side.kills + side.hook_kills
            if side.hook_kills:
                res.faults["worker-hook-kill"] = side.hook_kills
            res.server_restarts = side.server_restarts
            res.notes.append(f"migration workflow phase at the end: {side.final_phase}")
            side.stop()
        read_child_log(child_log, log)
        res.acknowledged = log.acked
        res.failed_requests = log.failed

        # -- reconciliation: drain the logs and the queue, then verify + repair -------------------------
        execute(old, f"UPDATE {control.REPAIR_QUEUE} SET next_attempt_at = next_attempt_at - INTERVAL '1' DAY")
        for _ in range(5):
            if strategy in ("outbox", "triggers"):
                res.relayed += drain(relay_old, relay_new, name, mapping_for, control_store=old,
                                     max_seconds=60).mirrored
            res.repaired_from_queue += drain_repairs(old, relay_old, relay_new, name, mapping_for,
                                                     base_backoff_seconds=0.1, max_backoff_seconds=0.1).mirrored
            if control.repair_queue_depth(old, name) == 0:
                break
        before = _full_verify(old, new_direct, writer)
        res.differences_before = before.total_differences
        if not before.ok:
            res.notes += describe_differences(before, log, "before repair", limit=4)
        report = before
        for _ in range(5):
            if report.ok:
                break
            r = repair(old, new_direct, writer.mapping_for(TABLE, False), report)
            res.recopied += r.repaired_keys
            report = _full_verify(old, new_direct, writer)
        after = _full_verify(old, new_direct, writer)
        res.differences_after = after.total_differences
        res.rows = after.rows_source
        if not after.ok:
            res.notes += describe_differences(after, log, "after repair")
            time.sleep(2.0)
            later = _full_verify(old, new_direct, writer)
            res.notes.append(f"the same comparison 2 s later: {later.total_differences} differences"
                             f" ({later.missing} missing, {later.extra} extra, {later.field_different} field)")

        # -- every acknowledged write present with its last value; no deleted row back -----------------
        rows_old, rows_new = all_rows(old), all_rows(new_direct)
        for key, outcome in log.last.items():
            allowed = {outcome} | log.maybe.get(key, set())
            for rows in (rows_old, rows_new):
                got: tuple[Any, ...] = ("v", rows[key][0]) if key in rows else ("d",)
                if got in allowed:
                    continue
                if outcome == ("d",):
                    res.resurrected += 1
                elif got == ("d",):
                    res.missing_acked += 1
                else:
                    res.wrong_value += 1
        return res
    finally:
        stop.set()
        proxy.stop()
        if side is not None:
            side.stop()
        for s in stores:
            with contextlib.suppress(Exception):
                s.dispose()
        if not keep:
            drop_databases(pair, tag)
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept: databases dwchaos_{tag}_old/_new, files {workdir}", flush=True)


BACKFILL_DEADLINE_SECONDS = 90.0


async def _start_and_backfill(side: TemporalSide, spec: MigrationSpec) -> None:
    """Start the MigrationWorkflow and advance it into BACKFILL (copy while the writers run).

    outbox / triggers: the relay is started first, with the harness's tuning (fast polls, short heartbeats,
    so worker kills are noticed quickly); the migration then adopts the relay running under the fixed id
    instead of starting one of its own with the defaults."""
    from temporalio.service import RPCError

    from workflows.models import MigrationStatus, TransitionRequest, TransitionResult

    if str(spec.strategy.value) != "sync":
        await side.start_relay(spec)
    handle = await side.start_migration(spec)
    # generous: under load a worker takes seconds to start, and the copy hook may kill both workers (and
    # their replacements) before the first status answer
    deadline = time.monotonic() + BACKFILL_DEADLINE_SECONDS
    last = "no answer"
    while time.monotonic() < deadline:
        side.respawn_dead()  # a worker the copy hook killed: the main loop that respawns them has not begun
        try:
            st = await handle.query("status", result_type=MigrationStatus)
            if st.phase in ("BACKFILL", "SHADOW_READ"):
                return
            last = f"phase {st.phase}, waiting for: {st.waiting_for or '-'}"
            if st.waiting_for.startswith(("operator", "gate", "auto")) or st.waiting_for == "":
                await handle.execute_update("advance", TransitionRequest(by="bench.chaos", reason="chaos run"),
                                            result_type=TransitionResult)
        except RPCError as exc:  # "no poller seen", "Timeout expired": the workers are (re)starting
            last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(1.0)
        await asyncio.sleep(0.3)
    raise RuntimeError(f"the migration did not reach BACKFILL within {BACKFILL_DEADLINE_SECONDS:.0f} s ({last})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--seconds", type=float, default=45.0)
    ap.add_argument("--pair", default="pg-pg", choices=["pg-pg", "mariadb-pg"])
    ap.add_argument("--strategy", default="sync", choices=["sync", "outbox", "triggers"])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seed-rows", type=int, default=3000)
    ap.add_argument("--no-temporal", action="store_true")
    ap.add_argument("--adapter-kills", type=int, default=2)
    ap.add_argument("--worker-kills", type=int, default=3)
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
    seconds = args.minutes * 60 if args.minutes is not None else args.seconds
    res = run(seconds=seconds, pair=args.pair, strategy=args.strategy, clients=args.clients,
              seed_rows=args.seed_rows, temporal=not args.no_temporal, adapter_kills=args.adapter_kills,
              worker_kills=args.worker_kills, keep=args.keep, rng_seed=args.rng_seed, verbose=not args.quiet)
    for line in res.lines(f"{args.pair} {args.strategy} {seconds:.0f}s"):
        print(line, flush=True)
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
