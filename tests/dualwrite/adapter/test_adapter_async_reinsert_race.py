"""[T2-5] A key deleted and re-inserted through the ``async`` writer ends present in both stores, however its two
background mirrors interleave.

The loss the chaos run found (pg-pg async, seed 12085145: a re-insert acknowledged in CUTOVER_WRITES, missing
from both stores at the end): the mirror of the delete read the authoritative row *absent*, which locks
nothing, so the mirror of the re-insert, on the other queue worker, read the new row, wrote it and committed
first; then the delete's mirror deleted it from the other store. The other store silently lacked an
acknowledged row; after the rollback made that store authoritative, the next verification "repaired" the
row away on the new store too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from app.endpoints import NOW
from app.harness import make_migration

from dualwrite import hooks
from dualwrite.adapter import AdapterOptions
from dualwrite.store import Store


@pytest.fixture
def chaos_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "hooks.json"
    path.write_text("{}")
    monkeypatch.setenv(hooks.ENV, str(path))
    monkeypatch.setattr(hooks, "_fired", {})  # "times" counts per process: each test starts afresh
    yield path


@pytest.mark.parametrize("phase", ["DUAL_WRITE", "CUTOVER_WRITES"])
def test_delete_then_reinsert_reaches_the_other_store(pg_old: Store, pg_new: Store, chaos_file: Path,
                                                      phase: str) -> None:
    opts = AdapterOptions(background=False, phase_ttl=0.05, async_workers=2, async_batch=1, async_batch_wait=0.0)
    m = make_migration(pg_old, pg_new, "async", options=opts)
    try:
        m.publish(phase)
        t, w = m.models.customers, m.writer
        assert w.lagged is not None
        row = {"tenant": "t", "name": "first", "balance": 1, "active": True, "created_at": NOW, "version": 5}
        (k,) = w.insert(t, row)
        assert w.lagged.flush(timeout=30)
        assert m.diffs(t, [k]) == []
        # the next mirror (the delete's) stalls right after reading the authoritative store
        chaos_file.write_text(json.dumps({"mirror.after_read": {"action": "pause", "seconds": 2, "times": 1}}))
        time.sleep(0.3)  # hook rules are re-read at most every 0.2 s
        w.delete(t, k)
        time.sleep(0.3)  # the delete's mirror has read "absent" and stalls
        w.insert(t, {**row, "id": k, "name": "re-inserted", "version": 1})  # mirrored by the other worker
        assert w.lagged.flush(timeout=30)
        authoritative = "new" if phase == "CUTOVER_WRITES" else "old"
        other = "old" if authoritative == "new" else "new"
        assert m.row(authoritative, t, k) is not None
        got = m.row(other, t, k)
        assert got is not None and got["name"] == "re-inserted", got
        assert m.diffs(t, [k]) == []
    finally:
        m.close()
