"""A process of the app writing with the ``async`` strategy whose background mirror never gets to commit (the
parent SIGKILLs it): every key it acknowledged sits in its in-memory queue when it dies.

argv: prefix old_url new_url n. The chaos hook ``mirror.before_commit`` (its control file in the environment,
set by the parent) holds each of this process's mirror batches before its commit. It writes ``n`` customers,
prints ``COMMITTED <id> <id> ...`` once every write is acknowledged and its watermark row (stuck before those
writes) is recorded, and then waits to be killed.
"""

from __future__ import annotations

import sys
import time

from app.endpoints import NOW
from app.harness import shop_spec
from app.models import make_models
from dualwrite.adapter import AdapterOptions, DualWriter
from dualwrite.config import StoreRef
from dualwrite.store import Store


def main() -> None:
    prefix, old_url, new_url, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    models = make_models(prefix)
    old, new = Store(StoreRef("old", old_url)), Store(StoreRef("new", new_url))
    _, spec = shop_spec(prefix, "old", "new", "async")
    writer = DualWriter(spec, old, new, options=AdapterOptions(background=False, phase_ttl=0.05))
    assert writer.lagged is not None
    ids = [writer.insert(models.customers, {"tenant": "crash", "name": f"lost-{i}", "balance": 1, "active": True,
                                            "created_at": NOW, "version": 1})[0] for i in range(n)]
    while not writer.lagged.record_watermark():
        time.sleep(0.05)
    print("COMMITTED " + " ".join(str(i) for i in ids), flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    main()
