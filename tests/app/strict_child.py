"""A process of the app writing with the ``strict`` strategy that is SIGKILLed between the two commits.

argv: prefix old_url new_url hook_file ack_id doomed_id. It writes customer ``ack_id`` (acknowledged: prints
``ACK <id>``), then turns the chaos hooks on (``strict.between_commits`` kills the process) and writes
customer ``doomed_id``: the other store has committed it, the authoritative store never will.
"""

from __future__ import annotations

import os
import sys

from app.endpoints import NOW
from app.harness import shop_spec
from dualwrite import hooks
from dualwrite.adapter import AdapterOptions, DualWriter
from dualwrite.config import StoreRef
from dualwrite.store import Store


def main() -> None:
    prefix, old_url, new_url, hook_file, ack_id, doomed_id = sys.argv[1:7]
    old, new = Store(StoreRef("old", old_url)), Store(StoreRef("new", new_url))
    _, spec = shop_spec(prefix, "old", "new", "strict")
    writer = DualWriter(spec, old, new, options=AdapterOptions(background=False, strict_note_grace=1.0))
    t = f"{prefix}_customers"
    row = {"tenant": "crash", "balance": 0, "active": True, "created_at": NOW, "version": 1}
    writer.insert(t, {**row, "id": int(ack_id), "name": "acknowledged"})
    print(f"ACK {ack_id}", flush=True)
    os.environ[hooks.ENV] = hook_file
    writer.insert(t, {**row, "id": int(doomed_id), "name": "doomed"})
    print("NOT KILLED", flush=True)


if __name__ == "__main__":
    main()
