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
from sqlalchemy.exc import OperationalError

from dualwrite import outbox
from dualwrite.config import StoreRef
from dualwrite.errors import SchemaError, StoreUnavailableError
from dualwrite.mapping import TableMapping
from dualwrite.relay import drain_log_batch
from dualwrite.store import Store

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
