"""Zero-downtime check: a client writes every few milliseconds through the adapter while the MigrationWorkflow
(real Temporal dev server + a worker.py process) moves CUTOVER_READS -> CUTOVER_WRITES -> rollback.

    python -m bench.zero_downtime [--hold 6] [--interval-ms 5] [--pair pg-pg|mariadb-pg]

Counts failed requests (goal 0) and the p50/p99 latency of each write per phase (the phase the adapter
routed the write with; ``after rollback`` once the rollback was accepted). After the rollback the writes
stop, the key logs and the repair queue drain, and every acknowledged write (the last value written to each
key) is looked up in the old store, authoritative again: ``lost writes: N`` (goal 0). The last line is
``failed requests: N``; the exit status is non-zero when either count is not 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.chaos import MY_DDL, PG_DDL, TABLE, TemporalSide, drop_databases, execute, fresh_databases
from dualwrite import control
from dualwrite.adapter import AdapterOptions, DualWriter
from dualwrite.adapter.phase import RULES
from dualwrite.config import StoreRef, env_var_for
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store

PHASES_OF_INTEREST = ("CUTOVER_READS", "CUTOVER_WRITES")


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


class Client:
    """Writes one row every ``interval`` seconds (updates of a few hot rows and inserts), timing each."""

    def __init__(self, writer: DualWriter, interval: float) -> None:
        self.writer, self.interval = writer, interval
        self.lat: dict[str, list[float]] = defaultdict(list)
        self.failed: dict[str, int] = defaultdict(int)
        self.errors: list[str] = []
        self.label_suffix = ""
        self.rollback_refusals: list[str] = []
        self.stop = threading.Event()
        self.stopped = threading.Event()
        self.next_id = 5_000_000
        self.expected: dict[int, str] = {}
        """key -> the last value acknowledged for it (the adapter call returned)."""
        self.lost: int | None = None

    def run(self) -> None:
        try:
            self._run()
        finally:
            self.stopped.set()

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            phase = self.writer.route().phase + self.label_suffix
            t0 = time.perf_counter()
            try:
                if i % 2:
                    self.next_id += 1
                    key = self.next_id
                    self.writer.insert(TABLE, {"id": key, "name": f"zd-{i}", "n": i, "version": 1})
                else:
                    key = 1 + i % 50
                    self.writer.update(TABLE, key, {"name": f"zd-{i}", "n": i})
                self.lat[phase].append((time.perf_counter() - t0) * 1000)
                self.expected[key] = f"zd-{i}"
            except Exception as exc:  # noqa: BLE001 - counted: the figure is the number of failed requests
                self.failed[phase] += 1
                if len(self.errors) < 5:
                    self.errors.append(f"{phase}: {type(exc).__name__}: {exc}"[:300])
            left = self.interval - (time.perf_counter() - t0)
            if left > 0:
                time.sleep(left)


async def start_relay(side: TemporalSide, spec: MigrationSpec) -> None:
    """outbox / triggers: a relay tuned for a write every few ms (polls every 0.1 s). It must start *before*
    the migration: the MigrationWorkflow starts a relay with default tuning unless one already runs under
    the relay's id, in which case it adopts that one."""
    from temporalio.client import Client

    from dualwrite.codec import data_converter
    from workflows.relay import RelayInput, relay_workflow_id

    client = await Client.connect(f"127.0.0.1:{side.port}", data_converter=data_converter())
    await client.start_workflow("RelayWorkflow", RelayInput(spec=spec, poll_seconds=0.1, heartbeat_timeout_seconds=5),
                                id=relay_workflow_id(spec.name), task_queue=side.queue)


async def count_lost(client: Client, spec: MigrationSpec, old: Store, new: Store, say: Any) -> int:
    """Stop writing, let the relay and the repair queue drain, then count acknowledged writes the old store
    (authoritative again after the rollback) does not hold."""
    from dualwrite import outbox

    client.stop.set()
    await asyncio.to_thread(client.stopped.wait, 30)

    def backlog() -> int:
        n = control.repair_queue_depth(old, spec.name)
        for store in (old, new):
            present = store.table_names()
            n += sum(outbox.log_depth(store, spec.name, log=lg)[0] for lg in outbox.LOGS if lg in present)
        return n

    deadline = time.monotonic() + 60
    while (left := await asyncio.to_thread(backlog)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    if left:
        say(f"backlog not drained after 60 s: {left} entries")
    with old.connect() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT id, name FROM {TABLE}")
        found = {int(r[0]): str(r[1]) for r in cur.fetchall()}
        cur.close()
        conn.rollback()
    return sum(1 for k, v in client.expected.items() if found.get(k) != v)


async def drive(side: TemporalSide, spec: MigrationSpec, client: Client, hold: float, say: Any,
                stores: tuple[Store, Store]) -> None:
    from workflows.models import MigrationStatus, Phase, TransitionRequest, TransitionResult

    if str(spec.strategy.value) != "sync":
        await start_relay(side, spec)
        say("relay workflow started (tuned; the migration adopts it)")
    handle = await side.start_migration(spec)

    async def status() -> MigrationStatus:
        st: MigrationStatus = await handle.query("status", result_type=MigrationStatus)
        return st

    async def settle(timeout: float = 120) -> MigrationStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = await status()
            if st.waiting_for.startswith(("operator", "gate", "auto")) or st.waiting_for == "":
                return st
            await asyncio.sleep(0.2)
        raise RuntimeError(f"phase {st.phase} did not settle: waiting for {st.waiting_for}")

    async def move(update: str, **kw: Any) -> str:
        await settle()
        res = await handle.execute_update(update, TransitionRequest(by="bench.zero_downtime", reason="zero-downtime "
                                                                    "check", force=True, **kw),
                                          result_type=TransitionResult)
        if not res.ok:
            raise RuntimeError(f"{update} refused: {res.message}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the adapter follows once the workflow published the phase
            if client.writer.route().phase == res.phase.value:
                break
            await asyncio.sleep(0.05)
        return str(res.phase.value)

    st = await status()
    while Phase(st.phase).rank < Phase("CUTOVER_READS").rank:
        phase = await move("advance")
        say(f"phase {phase}")
        st = await status()
    await asyncio.sleep(hold)
    say("phase CUTOVER_WRITES")
    await move("advance")
    await asyncio.sleep(hold)
    client.label_suffix = " (after rollback)"
    # under live writes, too: the workflow catches the key logs up and treats keys still logged as in
    # flight, so the first attempt must succeed (a refusal is a driver error, printed below)
    try:
        phase = await move("rollback")
    except RuntimeError as exc:
        client.rollback_refusals.append(str(exc)[:300])
        raise
    say(f"rolled back to {phase}")
    await asyncio.sleep(hold)
    client.lost = await count_lost(client, spec, *stores, say)
    say(f"lost writes: {client.lost}")
    with contextlib.suppress(Exception):
        await handle.terminate("zero-downtime check over")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", default="pg-pg", choices=["pg-pg", "mariadb-pg"])
    ap.add_argument("--strategy", default="sync", choices=["sync", "outbox", "triggers"])
    ap.add_argument("--hold", type=float, default=6.0, help="seconds spent in each phase of interest")
    ap.add_argument("--interval-ms", type=float, default=5.0)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("dualwrite").setLevel(logging.ERROR)

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    tag = f"zd_{secrets.token_hex(2)}"
    old_url, new_url = fresh_databases(args.pair, tag)
    workdir = Path(tempfile.mkdtemp(prefix="dwzd-"))
    old, new = Store(StoreRef("chaosold", old_url)), Store(StoreRef("chaosnew", new_url))
    side = TemporalSide(workdir, {env_var_for("chaosold"): old_url, env_var_for("chaosnew"): new_url})
    client: Client | None = None
    thread: threading.Thread | None = None
    writer: DualWriter | None = None
    error = ""
    try:
        execute(old, MY_DDL if args.pair == "mariadb-pg" else PG_DDL)
        execute(new, PG_DDL)
        with old.connect() as conn:
            cur = conn.cursor()
            ph = old.paramstyle
            cur.executemany(f"INSERT INTO {TABLE} (id, name, n, version) VALUES ({ph}, {ph}, {ph}, 1)",
                            [(i, f"seed-{i}", 0) for i in range(1, 2001)])
            cur.close()
            conn.commit()
        control.ensure_schema(old)
        spec = MigrationSpec.model_validate({
            "name": f"zd-{tag}".replace("_", "-"), "old": "chaosold", "new": "chaosnew", "strategy": args.strategy,
            "tables": [{"source": TABLE, "version_column": "version", "batch_size": 500}],
            "gates": {"min_shadow_samples": 0, "min_write_samples": 0, "min_latency_samples": 0},
            "rollback_triggers": {"enabled": False}})
        writer = DualWriter(spec, old, new, control_store=old, options=AdapterOptions(
            background=True, phase_ttl=0.2, heartbeat_seconds=1.0))
        side.start_server()
        side.start_worker()
        client = Client(writer, args.interval_ms / 1000)
        thread = threading.Thread(target=client.run, daemon=True)
        thread.start()
        try:
            asyncio.run(drive(side, spec, client, args.hold, say, (old, new)))
        except Exception as exc:  # noqa: BLE001 - reported below; the figures so far still print
            error = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        if client is not None:
            client.stop.set()
        if thread is not None:
            thread.join(30)
        if writer is not None:
            writer.close()
        side.stop()
        for s in (old, new):
            s.dispose()
        drop_databases(args.pair, tag)
        shutil.rmtree(workdir, ignore_errors=True)
    assert client is not None
    total_failed = sum(client.failed.values())
    total = sum(len(v) for v in client.lat.values()) + total_failed
    print(f"zero-downtime check: {args.pair} {args.strategy}, one write every {args.interval_ms:g} ms")
    order = {p: i for i, p in enumerate(RULES)}
    for phase in sorted(client.lat.keys() | client.failed.keys(),
                        key=lambda p: (p.endswith(")"), order.get(p.split(" ")[0], 99))):
        xs = client.lat.get(phase, [])
        print(f"phase {phase}: requests {len(xs) + client.failed.get(phase, 0)}, failed {client.failed.get(phase, 0)}, "
              f"p50 {pct(xs, 50):.2f} ms, p99 {pct(xs, 99):.2f} ms")
    for e in client.errors:
        print(f"error: {e}")
    for r in client.rollback_refusals:
        print(f"rollback refused: {r}")
    print(f"rollback attempts: {len(client.rollback_refusals) + 1}, refused: {len(client.rollback_refusals)}")
    if error:
        print(f"driver error: {error}")
    p99 = {p: pct(client.lat.get(p, []), 99) for p in ("CUTOVER_READS", "CUTOVER_WRITES")}
    rb = [x for p, v in client.lat.items() if p.endswith("(after rollback)") for x in v]
    print(f"p99 write latency ms: CUTOVER_READS={p99['CUTOVER_READS']:.2f} "
          f"CUTOVER_WRITES={p99['CUTOVER_WRITES']:.2f} after-rollback={pct(rb, 99):.2f}")
    print(f"requests: {total}")
    print(f"lost writes: {'not counted' if client.lost is None else client.lost}")
    print(f"failed requests: {total_failed}")
    return 0 if total_failed == 0 and client.lost == 0 and not error else 1


if __name__ == "__main__":
    sys.exit(main())
