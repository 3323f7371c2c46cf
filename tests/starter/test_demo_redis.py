"""``dualwrite demo --new-store redis``, as a user runs it ([T2-6]): the demo's SQLite old store migrated into
a Redis the demo starts itself (persistence on), every phase to DONE with the same report as the SQL demo;
and ``--new-url`` pointing at a Redis that keeps nothing on disk (the machine's shared one): refused at
CUTOVER_WRITES with the settings to change, unless ``--allow-volatile-new-store`` is passed, which is then
recorded as a forced transition with its reason."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_demo import _free_port

from starter.demo_config import DemoConfig, DemoError
from starter.demo_watch import Watcher
from workflows.models import MigrationStatus, Phase, TransitionRequest, TransitionResult


def _demo(*args: str, timeout: float = 200, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    port, ui = _free_port(), _free_port()
    return subprocess.run(
        [sys.executable, "-c", "from starter.cli import main; main()", "demo", "--port", str(port),
         "--ui-port", str(ui), *args],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "160", **(env or {})})


def _report(path: Path) -> dict[str, object]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_demo_into_a_private_redis_reaches_done_with_every_write_read_back(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    proc = _demo("--short", "--new-store", "redis", "--workdir", str(tmp_path / "work"), "--report-json",
                 str(report_path), "--timeout", "150")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "Traceback" not in output and "private Redis on 127.0.0.1:" in output
    r = _report(report_path)
    assert r["ok"] is True and r["phase"] == "DONE"
    assert str(r["stores"]["new"]).startswith("redis://127.0.0.1:")  # type: ignore[index]
    verifications = r["verifications"]
    assert verifications and all(v["ok"] and v["rows_compared"] > 0 for v in verifications)  # type: ignore[union-attr]
    assert any(v["direction"] == "new->old" for v in verifications)  # type: ignore[union-attr]
    writes_gate = r["gates"]["CUTOVER_WRITES"]  # type: ignore[index]
    assert writes_gate["passed"] and writes_gate["checks"]["new_store_durable"] is True, writes_gate
    assert writes_gate["checks"]["new_store_intact"] is True, writes_gate
    ack = r["acknowledged_writes"]
    assert ack["keys_checked"] > 50 and ack["problem_count"] == 0, ack  # type: ignore[index]
    shadow, secondary = r["shadow_reads"], r["secondary_writes"]
    assert shadow["compared"] >= 50 and shadow["match_rate"] >= 0.999, shadow  # type: ignore[index]
    assert secondary["attempts"] >= 50 and secondary["success_rate"] >= 0.9995, secondary  # type: ignore[index]
    split = r["split_column"]
    assert split["mismatches"] == 0 and split["example"]["new_first_name"] == "Ada", split  # type: ignore[index]
    # the demo's redis-server kept an append-only file in the work directory, and is stopped
    assert list((tmp_path / "work" / "redis").rglob("*.aof*"))


def _status(**checks: bool) -> MigrationStatus:
    return MigrationStatus(name="demo-x", phase=Phase.CUTOVER_READS, paused=False, mode="auto", strategy="sync",
                           epoch=4, gate={"to": "CUTOVER_WRITES", "passed": False, "checks": checks,
                                          "reasons": ["new_store_durable: Redis keeps nothing on disk (appendonly "
                                                      "no, save \"\"): ...; set `appendonly yes`"]})


class _Handle:
    def __init__(self) -> None:
        self.requests: list[TransitionRequest] = []

    async def execute_update(self, name: str, req: TransitionRequest, result_type: Any) -> TransitionResult:
        assert name == "advance"
        self.requests.append(req)
        return TransitionResult(ok=True, phase=Phase.CUTOVER_WRITES, epoch=5, message="forced")


def test_a_redis_that_keeps_nothing_on_disk_is_refused_at_write_cutover_unless_overridden(tmp_path: Path,
                                                                                          volatile_redis: str) -> None:
    """The demo's watcher at the CUTOVER_WRITES gate (the override's end-to-end run is the next test)."""
    cfg = DemoConfig(short=True, workdir=tmp_path, old_url="sqlite://", new_url=volatile_redis, external=False,
                     port=1, ui_port=2, timeout=10, keep_running=False, customers=10, orders_per_customer=1,
                     redis=True)
    handle = _Handle()
    refused = Watcher(cfg, None, (10, 10))  # type: ignore[arg-type]
    with pytest.raises(DemoError, match="refused at CUTOVER_WRITES: new_store_durable: Redis keeps nothing on disk"
                                        ".*--allow-volatile-new-store"):
        asyncio.run(refused._volatile_new_store(handle, _status(new_store_durable=False)))  # type: ignore[arg-type]

    cfg.allow_volatile = True
    watch = Watcher(cfg, None, (10, 10))  # type: ignore[arg-type]
    # another check still failing: the gate decides first, nothing is forced
    asyncio.run(watch._volatile_new_store(handle, _status(new_store_durable=False,  # type: ignore[arg-type]
                                                          shadow_match_rate=False)))
    assert handle.requests == []
    for _ in range(2):  # forced once, with the reason recorded
        asyncio.run(watch._volatile_new_store(handle, _status(new_store_durable=False,  # type: ignore[arg-type]
                                                              shadow_match_rate=True)))
    assert len(handle.requests) == 1
    req = handle.requests[0]
    assert req.force and req.to is Phase.CUTOVER_WRITES and req.from_phase is Phase.CUTOVER_READS
    assert req.reason.startswith("operator override: new_store_durable: Redis keeps nothing on disk")


def test_the_explicit_override_is_recorded_in_the_transition_history(tmp_path: Path, volatile_redis: str) -> None:
    report_path = tmp_path / "report.json"
    proc = _demo("--short", "--new-url", volatile_redis, "--allow-volatile-new-store", "--workdir",
                 str(tmp_path / "work"), "--report-json", str(report_path), "--timeout", "150")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    r = _report(report_path)
    assert r["phase"] == "DONE" and r["acknowledged_writes"]["problem_count"] == 0  # type: ignore[index]
    forced = [t for t in r["transitions"] if t["to"] == "CUTOVER_WRITES"]  # type: ignore[union-attr]
    assert forced and forced[-1]["kind"] == "force", forced
    assert "new_store_durable" in forced[-1]["reason"] and "keeps nothing on disk" in forced[-1]["reason"]
    assert r["gates_overridden"] == ["CUTOVER_WRITES"] and r["ok"] is True
    assert "FORCED by the operator's override (recorded)" in output


def test_a_missing_redis_server_binary_names_the_package(tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("temporal",):
        found = shutil.which(tool)
        if found:
            (bare / tool).symlink_to(found)
    proc = _demo("--new-store", "redis", "--workdir", str(tmp_path / "work"), timeout=60,
                 env={"PATH": str(bare)})
    assert proc.returncode == 1
    assert "redis-server is not installed" in proc.stderr + proc.stdout and "apt-get install redis-server" in (
        proc.stderr + proc.stdout)
