"""``dualwrite demo --short``, as a user runs it: its own Temporal dev server, an in-process worker, SQLite
stores with different schemas, a live application on the adapter, auto mode through every phase. The
final report is the assertion: every phase reached, rows copied and verified both ways, each cutover's gate
passed on real evidence, the application's acknowledged writes all in the new store, and the split column
(old ``name`` -> new ``first_name`` + ``last_name``) equal on both stores."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

GATED = ("CUTOVER_READS", "CUTOVER_WRITES", "CLEANUP")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_short_runs_a_whole_live_migration(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    port, ui = _free_port(), _free_port()
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", "from starter.cli import main; main()", "demo", "--short", "--workdir",
         str(tmp_path / "work"), "--port", str(port), "--ui-port", str(ui), "--report-json", str(report_path),
         "--timeout", "150"],
        capture_output=True, text=True, timeout=200, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "160"})
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "Traceback" not in output
    assert elapsed < 180, f"the short demo took {elapsed:.0f}s"

    r = json.loads(report_path.read_text(encoding="utf-8"))
    assert r["ok"] is True and r["phase"] == "DONE"
    assert r["workflow_id"] == f"dualwrite-{r['migration']}" and r["migration"].startswith("demo-")
    assert r["ui_url"] == f"http://localhost:{ui}/namespaces/default/workflows/{r['workflow_id']}"
    assert r["ui_url"] in output and "dualwrite demo report" in output

    # every phase, in order, each entered by the auto mode
    path = [t["to"] for t in r["transitions"] if t["kind"] != "start"]
    assert path[:2] == ["DUAL_WRITE", "BACKFILL"] and path[-1] == "DONE"
    for phase in ("SHADOW_READ", "CUTOVER_READS", "CUTOVER_WRITES", "CLEANUP"):
        assert phase in path

    # the legacy rows (and what the application added before the copy) were copied
    seeded = r["rows_seeded"]
    assert r["rows_copied"]["customers"] >= seeded["customers"]
    assert r["rows_copied"]["orders"] >= seeded["orders"] * 0.9  # a few were cancelled while it copied

    # verifications: every one clean, and new -> old once the new store was authoritative
    assert r["verifications"] and all(v["ok"] for v in r["verifications"])
    assert all(v["rows_compared"] > 0 for v in r["verifications"])
    assert any(v["direction"] == "new->old" for v in r["verifications"])
    assert r["verification_ok"] is True

    # each cutover passed its gate, with the evidence recorded in the workflow history
    for phase in GATED:
        gate = r["gates"][phase]
        assert gate["passed"] is True, gate
        assert gate["checks"] and all(gate["checks"].values()), gate
    reads_gate = r["gates"]["CUTOVER_READS"]["checks"]
    assert {"shadow_match_rate", "secondary_write_success_rate", "backfill_completion"} <= set(reads_gate)

    # the application's numbers over the whole run
    app = r["application"]
    assert app["writes"] > 100 and app["reads"] > 100 and not app["write_failures"]
    assert r["secondary_writes"]["attempts"] >= 100 and r["secondary_writes"]["success_rate"] >= 0.9995
    assert r["shadow_reads"]["compared"] >= 100 and r["shadow_reads"]["match_rate"] >= 0.999
    ack = r["acknowledged_writes"]
    assert ack["keys_checked"] > 50 and ack["problem_count"] == 0, ack

    # the split column: old name = new first_name + last_name on every customer in both stores, those
    # split on the way forward and those the application created after write cutover, joined on the way back
    split = r["split_column"]
    assert split["column"] == "customers.name -> first_name + last_name"
    assert split["rows_compared"] >= seeded["customers"] and split["mismatches"] == 0, split
    assert split["example"] == {"id": 1, "old_name": "Ada Lovelace", "new_first_name": "Ada",
                                "new_last_name": "Lovelace"}
    assert "split column" in output and "'Ada Lovelace' = 'Ada' + 'Lovelace'" in output

    # the log is JSON lines with the workflow context bound
    lines = [json.loads(line) for line in Path(r["log"]).read_text(encoding="utf-8").splitlines() if line]
    assert any(line.get("workflow_id") == r["workflow_id"] and line.get("migration") == r["migration"]
               for line in lines)


def _demo(*args: str, timeout: float = 200) -> subprocess.CompletedProcess[str]:
    port, ui = _free_port(), _free_port()
    return subprocess.run(
        [sys.executable, "-c", "from starter.cli import main; main()", "demo", "--port", str(port),
         "--ui-port", str(ui), *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "160"})


def test_demo_store_url_runs_on_a_mariadb_server_in_databases_of_its_own(tmp_path: Path) -> None:
    """``--store-url`` names a server, not a database: the demo works in ``dwdemo_old``/``dwdemo_new``."""
    from conftest import mysql_connect

    report_path = tmp_path / "report.json"
    proc = _demo("--short", "--store-url", "mysql://root@127.0.0.1:3306/test", "--workdir", str(tmp_path),
                 "--report-json", str(report_path), "--timeout", "150")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    r = json.loads(report_path.read_text(encoding="utf-8"))
    assert r["ok"] is True and r["phase"] == "DONE"
    split = r["split_column"]
    assert split["rows_compared"] >= 200 and split["mismatches"] == 0, split
    conn = mysql_connect(host="127.0.0.1", port=3306, user="root")
    try:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM dwdemo_new.dwdemo_customers")
        assert cur.fetchone()[0] >= 200  # type: ignore[index]
    finally:
        conn.close()


def test_demo_store_url_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    proc = _demo("--store-url", "sqlite:///x.db", timeout=60)
    assert proc.returncode == 2 and "--store-url must be a postgresql:// or mysql:// URL" in proc.stderr
    proc = _demo("--store-url", "postgresql://127.0.0.1/postgres", "--old-url", "postgresql://x/y", timeout=60)
    assert proc.returncode == 2 and "not both" in proc.stderr
