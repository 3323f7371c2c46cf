"""Strategy ``cdc`` in the chaos harness: capture started before the first write, and the log applied up to
its end at reconciliation.

The relay's own activities (``activities/cdc_relay.py``) do the same with a worker's store cache; the
harness has no worker, so it builds the capture's table list from the mappings it already compiles
(:class:`bench.chaos.Mappings`). Reading a PostgreSQL slot that the RelayWorkflow reads at the same moment
is safe: one of the two readers gets ``SlotBusy`` (an empty batch) and the other applies it; a MariaDB
position saved twice only makes a batch be mirrored again, which re-reads the authoritative rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from dualwrite import triggers
from dualwrite.cdc import capture
from dualwrite.cdc.pg import TableKeys
from dualwrite.mapping import TableMapping
from dualwrite.store import Store

__all__ = ["drain", "setup"]


def setup(old: Store, new: Store, control_store: Store, migration: str, tables: Sequence[str]) -> None:
    """Start capture on both stores, as the relay's setup does (idempotent: the relay keeps this slot / this
    binlog position), so that no write of the run happens before capture exists."""
    for store in (old, new):
        capture.setup(store, control_store, migration, tables)


def drain(old: Store, new: Store, control_store: Store, migration: str,
          mapping_for: Callable[[str, bool], TableMapping], phase: str, *, max_seconds: float,
          tables: Sequence[str] = ("chaos_items", "chaos_pairs", "chaos_docs")) -> int:
    """Apply the authoritative store's captured changes up to the end of its log as it is now (the relay's
    catch-up point), for at most ``max_seconds``; returns how many keys were mirrored here."""
    reverse = triggers.authoritative_side(phase) == "new"
    source, target = (new, old) if reverse else (old, new)
    mappings = {m.source_table: m for m in (mapping_for(t, reverse) for t in tables)}
    keys = [TableKeys(m.source_table, list(m.source_key), list(m.key_kinds)) for m in mappings.values()]
    point = capture.end_point(source, control_store, migration)
    if point is None:
        return 0
    mirrored = 0
    deadline = time.monotonic() + max_seconds
    while not capture.reached(source, control_store, migration, point) and time.monotonic() < deadline:
        res = capture.drain_batch(source, target, control_store, migration, keys, mappings.__getitem__,
                                  reverse=reverse)
        mirrored += res.mirrored
        if not res.entries:
            time.sleep(0.2)  # the other reader holds the slot, or nothing is decoded yet
    return mirrored
