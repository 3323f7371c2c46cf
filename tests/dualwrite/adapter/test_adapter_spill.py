"""Repair keys that only lived in memory survive the application's exit.

A real application process (a subprocess) writes while the control store is unreachable (behind a TCP
fault proxy), so its failed secondary writes cannot reach the durable repair queue; it then exits. The keys
must be spilled to a file on the application's host (mode 0600, never logged), re-queued by the next writer
of the migration once the control store is back, and a repair drain must leave both stores equal.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from app.harness import TcpProxy
from conftest import create_pg, rows_of

from dualwrite import control
from dualwrite.adapter import AdapterOptions, DualWriter
from dualwrite.config import StoreRef
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store

N = 40
FIRST_ID = 9_100_001


@pytest.mark.parametrize("exit_by", ["close", "no-close"])
def test_keys_pending_at_exit_are_spilled_then_requeued_and_repaired(
        pg_old: Store, pg_new: Store, table_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        exit_by: str) -> None:
    create_pg(pg_old, table_name, 10)
    create_pg(pg_new, table_name, 10)
    name = f"spill-{secrets.token_hex(3)}"
    control.ensure_schema(pg_old)
    control.publish_state(pg_old, name, "CUTOVER_WRITES", 1)
    spill_dir = tmp_path / "state"
    proxy = TcpProxy("127.0.0.1", 5432)
    proxy.start()
    tests_dir = Path(__file__).resolve().parents[2]
    env = {**os.environ, "DUALWRITE_SPILL_DIR": str(spill_dir),
           "PYTHONPATH": os.pathsep.join([str(tests_dir), str(tests_dir.parent), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, str(tests_dir / "app" / "spill_child.py"), name, table_name,
         proxy.url_for(pg_old.ref.url), pg_new.ref.url, str(N), exit_by],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "READY"
        proxy.stop()  # the old store (the mirror and the control store) refuses connections now
        child.stdin.write("GO\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
    finally:
        if child.poll() is None:
            child.kill()
        proxy.stop()
    if exit_by == "close":
        closed = json.loads(next(line for line in out.splitlines() if line.startswith("CLOSED "))[7:])
        # close() says how many were pending and where they went
        assert closed["pending"] == N and closed["spilled"] == N and closed["lost"] == 0, closed
        path = Path(closed["spill_path"])
    else:
        assert "EXITING" in out
        files = list(spill_dir.rglob("*.jsonl"))
        assert len(files) == 1, files
        path = files[0]
    assert path.is_relative_to(spill_dir) and path.exists()
    assert len(path.read_text().splitlines()) == N
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"{N} " in err and str(path) in err  # a log line with counts and where
    assert all(str(FIRST_ID + i) not in err + out for i in range(N)), "a key reached the logs"
    assert control.repair_queue_depth(pg_old, name) == 0  # nothing got there while it was down
    # the old store misses every row written meanwhile
    assert len(rows_of(pg_new, table_name)) == 10 + N and len(rows_of(pg_old, table_name)) == 10

    # the control store is back: the next writer of the migration (same spec, same spill dir) re-queues
    monkeypatch.setenv("DUALWRITE_SPILL_DIR", str(spill_dir))
    spec = MigrationSpec.model_validate({"name": name, "old": "old", "new": "new", "strategy": "sync",
                                         "tables": [{"source": table_name, "version_column": "version"}]})
    writer = DualWriter(spec, Store(StoreRef("old", pg_old.ref.url)), Store(StoreRef("new", pg_new.ref.url)),
                        options=AdapterOptions(background=False))
    try:
        assert control.repair_queue_depth(pg_old, name) == N
        assert not path.exists()
        assert writer.drain_repairs() == N
    finally:
        writer.close()
    assert rows_of(pg_old, table_name) == rows_of(pg_new, table_name)
