"""A writer that does what an unchanged application does ([T2-1]): raw SQL, no adapter, through every flip.

It inserts new keys, updates with and without a version bump, deletes and re-inserts hot keys (their version
restarting at 1). It writes to the old store until that store refuses (write cutover denied it), then to the
new store, and the other way round after a rollback, recording every write it was told succeeded. Used by
the ``triggers`` and ``cdc`` workflow tests.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from conftest import MigrationDriver, eventually, execute, fetch_all

from dualwrite.config import StoreRef
from dualwrite.store import Store

DELETED = None


class RawWriter(threading.Thread):
    """Writes raw SQL to whichever store accepts it; records every acknowledged write."""

    def __init__(self, stores: dict[str, Store], table: str, hot_keys: int = 12) -> None:
        super().__init__(daemon=True)
        self.stores = stores
        self.table = table
        self.target = "old"
        self.acked: dict[int, str | None] = {}
        self.refused = {"old": 0, "new": 0}
        self.errors: list[str] = []
        self.writes = 0
        self.stop = threading.Event()
        self.rng = random.Random(11)
        self.hot = list(range(1, hot_keys + 1))
        self.next_key = 100_000
        self.seq = 0

    def _op(self) -> tuple[str, tuple[Any, ...], int, str | None]:
        self.seq += 1
        name = f"w{self.seq}"
        roll = self.rng.random()
        key = self.rng.choice(self.hot)
        t = self.table
        if roll < 0.25:
            self.next_key += 1
            return f"INSERT INTO {t} VALUES (%s, %s, 1, now(), 1)", (self.next_key, name), self.next_key, name
        if roll < 0.45:
            return f"UPDATE {t} SET name = %s, version = version + 1 WHERE id = %s", (name, key), key, name
        if roll < 0.6:
            return f"UPDATE {t} SET name = %s WHERE id = %s", (name, key), key, name
        if roll < 0.8:
            return f"DELETE FROM {t} WHERE id = %s", (key,), key, DELETED
        return f"INSERT INTO {t} VALUES (%s, %s, 2, now(), 1)", (key, name), key, name

    def run(self) -> None:
        while not self.stop.is_set():
            sql, params, key, value = self._op()
            side = self.target
            try:
                with self.stores[side].connect() as conn:
                    cur = conn.cursor()
                    cur.execute(sql, params)
                    changed = cur.rowcount
                    conn.commit()
            except Exception as exc:  # noqa: BLE001 - classified below
                text = str(exc)
                if "refused here" in text:
                    self.refused[side] += 1
                    self.target = "new" if side == "old" else "old"  # the operator points the app over
                elif "duplicate" not in text.lower():
                    self.errors.append(text[:200])
                continue
            self.writes += 1
            if changed:
                self.acked[key] = value
            time.sleep(0.002)


def app_store(name: str, like: Store) -> Store:
    return Store(StoreRef(name, like.engine.url.render_as_string(hide_password=False)))


def contents(store: Store, table: str) -> dict[int, str]:
    return {int(r[0]): str(r[1]) for r in fetch_all(store, f"SELECT id, name FROM {table}")}


def lost(acked: dict[int, str | None], rows: dict[int, str]) -> list[int]:
    return sorted(k for k, v in acked.items() if rows.get(k) != v)


async def through_cutover_and_back(dw: MigrationDriver, handle: Any, writer: RawWriter, old_app: Store,
                                    new_app: Store, old: Store, new: Store, table: str, old_name: str) -> None:
    await dw.settled(handle, "PREPARE")
    try:
        await dw.advance_to(handle, "DUAL_WRITE")
        writer.start()
        await dw.advance_to(handle, "CUTOVER_READS")
        try:
            execute(new_app, f"UPDATE {table} SET name = 'early' WHERE id = 200")
            raise AssertionError("the new store accepted a raw write before write cutover")
        except Exception as exc:  # noqa: BLE001
            assert "refused here" in str(exc) and f"'{old_name}'" in str(exc), exc

        res = await dw.update(handle, "advance", by="pytest", reason="raw writer keeps writing", force=True)
        assert res.ok and res.phase == "CUTOVER_WRITES", res.message
        await eventually(lambda: writer.refused["old"] > 0 and writer.target == "new" and writer.writes > 50,
                         timeout=60, what="the old store refusing the raw writer")
        await dw.settled(handle, "CUTOVER_WRITES")
        start = writer.writes
        await eventually(lambda: writer.writes > start + 150, timeout=60, what="writes on the new store")

        res = await dw.update(handle, "rollback", by="pytest", reason="back while the writer writes")
        assert res.ok and res.phase == "CUTOVER_READS", res.message
        await eventually(lambda: writer.refused["new"] > 0 and writer.target == "old", timeout=60,
                         what="the new store refusing the raw writer after the rollback")
        await dw.settled(handle, "CUTOVER_READS")
        start = writer.writes
        await eventually(lambda: writer.writes > start + 150, timeout=60, what="writes on the old store again")
    finally:
        writer.stop.set()
        writer.join(10)

    assert not writer.errors, writer.errors[:5]
    assert lost(writer.acked, contents(old, table)) == [], "acknowledged writes missing or reverted"

    def level() -> bool:
        return contents(new, table) == contents(old, table)

    await eventually(level, timeout=60, what="the new store level with the old one")
    assert (await dw.status(handle)).phase == "CUTOVER_READS"
