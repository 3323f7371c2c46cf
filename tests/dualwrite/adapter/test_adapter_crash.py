"""A process killed (SIGKILL) right after its authoritative commit still gets its write mirrored.

outbox: the key was appended inside the committed transaction; triggers: the database logged it. Either
way the relay finds it, although the writing process never ran another line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from app.harness import make_migration

TESTS = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("pair", ["pg_old>pg_new", "my_old>pg_new"])
@pytest.mark.parametrize("strategy", ["outbox", "triggers"])
def test_killed_after_commit_is_still_mirrored(request: pytest.FixtureRequest, pair: str, strategy: str) -> None:
    old, new = (request.getfixturevalue(n) for n in pair.split(">"))
    m = make_migration(old, new, strategy)
    try:
        m.publish("DUAL_WRITE")
        prefix = m.models.customers.removesuffix("_customers")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
        child = subprocess.Popen([sys.executable, str(TESTS / "app" / "crash_child.py"), strategy, prefix,
                                  old.ref.url, new.ref.url], stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        assert line.startswith("COMMITTED "), line
        key = int(line.split()[1])
        t = m.models.customers
        assert m.row("old", t, key) is not None
        assert m.row("new", t, key) is None  # nothing was mirrored before the kill
        res = m.relay()
        assert res.mirrored >= 1 and res.failed == 0
        assert m.diffs(t, [key]) == []
        assert m.row("new", t, key)["name"] == "survivor"
    finally:
        m.close()
