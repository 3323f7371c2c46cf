"""Chaos convergence, short CI runs: PostgreSQL -> PostgreSQL and MariaDB -> PostgreSQL with each strategy.

Each run (``python -m bench.chaos``, a subprocess) writes through the adapter with several clients while the
secondary is refused / delayed / cut / black-holed behind a loopback proxy, worker.py processes are
SIGKILLed, the Temporal dev server is restarted once and an adapter process dies right after an
authoritative commit; then it reconciles and compares both stores. ``DUALWRITE_CHAOS_SECONDS`` sets the
length of each run (default 20 s; longer runs: ``python -m bench.chaos --minutes N``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECONDS = float(os.environ.get("DUALWRITE_CHAOS_SECONDS", "20"))


def figures(out: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in out.splitlines():
        if ": " in line and not line.startswith("["):
            k, v = line.split(": ", 1)
            found[k] = v
    return found


@pytest.mark.parametrize("strategy", ["sync", "outbox", "triggers"])
@pytest.mark.parametrize("pair", ["pg-pg", "mariadb-pg"])
def test_chaos_converges(pair: str, strategy: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--seconds", str(SECONDS), "--pair", pair, "--strategy", strategy,
         "--worker-kills", "2", "--adapter-kills", "1", "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=SECONDS + 240, check=False)
    out = proc.stdout
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines, proc.stderr[-3000:]
    assert lines[-1] == "differences after repair: 0", out + proc.stderr[-3000:]
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    f = figures(out)
    assert int(f["writes acknowledged"]) > 100, out
    assert f["acknowledged writes missing"].startswith("0,"), out
    assert "deleted rows back: 0" in out, out
    assert int(f["worker kills"]) >= 1, out
    assert int(f["temporal server restarts"]) == 1, out
    assert "note: workflow not driven" not in out, out
    kinds = f["faults injected by kind"]
    assert "worker-sigkill" in kinds and "temporal-restart" in kinds, out
