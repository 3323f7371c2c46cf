"""Chaos convergence, short CI runs: PostgreSQL -> PostgreSQL and MariaDB -> PostgreSQL.

Each run (``python -m bench.chaos``, a subprocess) writes like a real application - inserts above and below
the key range, updates with and without the version column, deletes, delete + re-insert with the version
back at 1, bursts on hot keys, on integer, composite and CHAR(36) UUID keys - while the MigrationWorkflow is
driven through BACKFILL, SHADOW_READ, a forced advance into CUTOVER_WRITES, a rollback and a forced advance
again; worker.py processes are SIGKILLed during the backfill, a verification, the authority switch and the
rollback, the Temporal dev server is restarted once, and the new store is refused / delayed / cut /
black-holed behind a loopback proxy. The writers are plain SQL on the old store with ``triggers`` and ``cdc``
(an application that was not changed; ``cdc`` on private servers that can capture, started by the run) and
the adapter with ``strict`` / ``sync`` / ``async`` / ``outbox``. Then the runs reconcile, and every
acknowledged write must be in the authoritative store with its last acknowledged value, no acknowledged
delete may come back, and the stores must be equal; with ``strict`` no write whose request raised may be in
either store. ``DUALWRITE_CHAOS_SECONDS`` sets the length
of each run (default 15 s of writes, then the rest of the transitions; longer: ``python -m bench.chaos --minutes
N``); two runs go at a time (``DUALWRITE_CHAOS_PARALLEL``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from dualwrite import outbox
from dualwrite.config import StoreRef
from dualwrite.errors import SchemaError, StoreUnavailableError
from dualwrite.mapping import TableMapping
from dualwrite.relay import drain_log_batch
from dualwrite.store import Store

REPO = Path(__file__).resolve().parents[2]
SECONDS = float(os.environ.get("DUALWRITE_CHAOS_SECONDS", "15"))
PARALLEL = int(os.environ.get("DUALWRITE_CHAOS_PARALLEL", "2"))
PHASES = ("DUAL_WRITE", "BACKFILL", "SHADOW_READ", "CUTOVER_READS", "CUTOVER_WRITES")


def figures(out: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in out.splitlines():
        if ": " in line and not line.startswith("["):
            k, v = line.split(": ", 1)
            found.setdefault(k, v)
    return found


def counts(text: str) -> dict[str, int]:
    """``a=1, b=2`` -> {"a": 1, "b": 2}."""
    out: dict[str, int] = {}
    for part in text.split(", "):
        if "=" in part:
            k, v = part.rsplit("=", 1)
            out[k] = out.get(k, 0) + int(v)
    return out


class Run:
    """One chaos subprocess, its output in a file (no pipe to fill while it waits its turn to be read)."""

    def __init__(self, pair: str, strategy: str, writer: str, tmp: Path) -> None:
        # PostgreSQL -> PostgreSQL keeps the CHAR(36) key a CHAR(36): a char(36) -> uuid change between two
        # PostgreSQL stores is a separate defect (a chunked verification new -> old compares
        # `character <= uuid` and fails), which would refuse every rollback here; MariaDB -> PostgreSQL
        # covers CHAR(36) -> uuid
        uuid_type = "char36" if pair == "pg-pg" else "uuid"
        self.out, self.err = tmp / f"{pair}-{strategy}.out", tmp / f"{pair}-{strategy}.err"
        self.started = time.monotonic()
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.chaos", "--seconds", str(SECONDS), "--pair", pair, "--strategy",
                 strategy, "--writer", writer, "--seed-rows", "300", "--clients", "2", "--write-interval-ms", "20",
                 "--adapter-kills", "1", "--new-uuid-type", uuid_type, "--quiet"],
                cwd=REPO, stdout=out, stderr=err)

    def wait(self) -> subprocess.CompletedProcess[str]:
        try:
            self.proc.wait(max(1.0, SECONDS + 900 - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, self.out.read_text(),
                                           self.err.read_text())


_RUNS: dict[tuple[str, str, str], Run] = {}


@pytest.fixture(scope="module", autouse=True)
def _no_run_left_behind() -> Iterator[None]:
    """A run started ahead for a test that then did not run (``-x``, an interrupt) is stopped cleanly
    (SIGINT: it drops its databases, Temporal server and workers)."""
    yield
    for r in _RUNS.values():
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGINT)
            try:
                r.proc.wait(60)
            except subprocess.TimeoutExpired:
                r.proc.kill()
    _RUNS.clear()


@pytest.fixture
def chaos(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Callable[[str, str, str], subprocess.CompletedProcess[str]]:
    """The run of one case, with the next selected cases started beside it (``DUALWRITE_CHAOS_PARALLEL``,
    default 2 at a time): each run spends most of its time waiting for timeouts after its worker kills, so
    two share the machine well and the chaos suite takes about half the wall time."""
    name = request.node.originalname
    cases = [(i.callspec.params["pair"], i.callspec.params["strategy"], i.callspec.params["writer"])
             for i in request.session.items if getattr(i, "originalname", "") == name and hasattr(i, "callspec")]
    tmp = tmp_path_factory.mktemp("chaos")

    def run(pair: str, strategy: str, writer: str) -> subprocess.CompletedProcess[str]:
        case = (pair, strategy, writer)
        if case not in _RUNS:
            _RUNS[case] = Run(*case, tmp)
        for nxt in cases[cases.index(case) + 1:] if case in cases else []:
            if sum(r.proc.poll() is None for r in _RUNS.values()) >= PARALLEL:
                break
            if nxt not in _RUNS:
                _RUNS[nxt] = Run(*nxt, tmp)
        return _RUNS.pop(case).wait()

    return run


# CI runs one case per strategy, on one pair each (both pairs are covered): the full grid, 60 s each, is
# `python -m bench.chaos` (the README's chaos section), and the closing notes of [T2-1], [T2-4] and [T2-5] record
# its figures. cdc runs on private servers that can capture (wal_level=logical / a ROW binlog), which the run
# starts and stops itself. Measured on the 2-core machine: the six cases take about 5 minutes, two at a time.
# Defects these cases found and that are fixed: cdc on PostgreSQL moved its slot past transactions it had not
# decoded when a peek stopped at its row limit (tests/dualwrite/test_cdc_pg_capture.py pins it); strict called a
# request failed whose authoritative COMMIT had committed with its reply lost (test_adapter_strategies.py).
@pytest.mark.parametrize(("pair", "strategy", "writer"), [("pg-pg", "cdc", "raw"),
                                                          ("mariadb-pg", "strict", "adapter"),
                                                          ("mariadb-pg", "triggers", "raw"),
                                                          ("pg-pg", "async", "adapter"),
                                                          ("pg-pg", "sync", "adapter"),
                                                          ("mariadb-pg", "outbox", "adapter")])
def test_chaos_no_acknowledged_write_lost(
        chaos: Callable[[str, str, str], subprocess.CompletedProcess[str]], pair: str, strategy: str,
        writer: str) -> None:
    proc = chaos(pair, strategy, writer)
    out = proc.stdout
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines, proc.stderr[-3000:]
    f = figures(out)
    # the run did what it claims: writes in every phase, every transition, kills inside the steps
    assert f.get("schedule") == "complete", out + proc.stderr[-3000:]
    assert int(f["writes acknowledged"]) > 100, out
    attempted = counts(f["writes attempted by phase"])
    for phase in PHASES:
        assert sum(v for k, v in attempted.items() if k.startswith(phase)) > 0, (phase, out)
    assert "CUTOVER_WRITES (forced)" in f["transitions"] and "rollback to CUTOVER_READS" in f["transitions"], out
    assert int(f["worker kills"]) >= 2, out
    assert int(f["temporal server restarts"]) == 1, out
    assert f["final phase"].startswith("CUTOVER_WRITES (authoritative: new)"), out
    # ... and nothing acknowledged was lost
    assert f["lost acknowledged writes"].startswith("0 "), out
    assert f["resurrected deletes"] == "0", out
    # strict: no write the application was told failed is in either store (the others do not promise it)
    told = f["writes told failed that a store holds"]
    assert told.startswith("0 of ") or "informative" in told, out
    if "(checked" in told:
        assert int(told.split(" of ")[1].split()[0]) > 0, ("the faults failed no strict request", out)
    assert lines[-1] == "differences after repair: 0", out + proc.stderr[-3000:]
    assert proc.returncode == 0, out + proc.stderr[-3000:]


@pytest.mark.parametrize(("error", "kept"), [(OperationalError("SELECT 1", {}, Exception("refused")), True),
                                             (StoreUnavailableError("store 'new' is unreachable"), True),
                                             (SchemaError([], "table t: not in the spec"), False)])
def test_relay_keeps_entries_it_cannot_map_yet(tmp_path: Path, error: Exception, kept: bool) -> None:
    """The relay builds a table's mapping by reflecting both stores, so that fails while a store is down (a
    restarted worker's first batch during an outage). Such a batch must stay in the log; only a verdict on
    the table itself (not in the spec) lets it go. Dropping it was the chaos runs' unexplained outbox drift."""
    old, new = (Store(StoreRef(n, f"sqlite:///{tmp_path / n}.db")) for n in ("old", "new"))
    outbox.ensure_log(old)
    with old.connect() as conn:
        conn.cursor().executemany(outbox.append_sql(old), [("m", "t", outbox.key_json((i,))) for i in range(3)])
        conn.commit()

    def mapping_for(table: str, reverse: bool) -> TableMapping:
        raise error

    try:
        if kept:
            with pytest.raises(type(error)):
                drain_log_batch(old, new, "m", mapping_for, reverse=False)
        else:
            assert drain_log_batch(old, new, "m", mapping_for, reverse=False).discarded == 3
        assert outbox.log_depth(old, "m")[0] == (3 if kept else 0)
    finally:
        old.dispose()
        new.dispose()
