"""An application process whose failed secondary writes cannot reach the control store either, and that
then exits (cleanly, through ``DualWriter.close``).

argv: migration table old_url new_url count [no-close]. The migration is in CUTOVER_WRITES: the new store is
authoritative, and the old one (the mirror for rollback, and the control store) sits behind a fault proxy
the parent turns off after ``READY``. On ``GO`` (stdin) it inserts ``count`` rows (ids 9_100_001...),
closes the writer and prints ``CLOSED <json>`` with what ``close()`` returned (``no-close``: just exits,
as an application that forgets ``close()`` would). The spill directory comes
from ``DUALWRITE_SPILL_DIR``.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from dualwrite.adapter import AdapterOptions, DualWriter
from dualwrite.config import StoreRef
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store

FIRST_ID = 9_100_001


def main() -> None:
    name, table, old_url, new_url, count = sys.argv[1:6]
    spec = MigrationSpec.model_validate({"name": name, "old": "old", "new": "new", "strategy": "sync",
                                         "tables": [{"source": table, "version_column": "version"}]})
    old, new = Store(StoreRef("old", old_url)), Store(StoreRef("new", new_url))
    writer = DualWriter(spec, old, new, control_store=old,
                        options=AdapterOptions(background=False, secondary_timeout=1.0))
    print("READY", flush=True)
    sys.stdin.readline()
    for i in range(int(count)):
        writer.insert(table, {"id": FIRST_ID + i, "name": f"spilled-{i}", "amount": 1.25,
                              "updated_at": "2025-01-01 00:00:00", "version": 1})
    if len(sys.argv) > 6 and sys.argv[6] == "no-close":
        print("EXITING", flush=True)  # an application that forgets close(): the interpreter exits anyway
        return
    report = writer.close()
    doc = dataclasses.asdict(report) if dataclasses.is_dataclass(report) else {"report": repr(report)}
    print("CLOSED " + json.dumps(doc, default=str), flush=True)


if __name__ == "__main__":
    main()
