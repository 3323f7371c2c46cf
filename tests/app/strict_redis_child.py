"""A process writing with ``strict`` between PostgreSQL and Redis that is SIGKILLed between the two commits.

argv: table pg_url redis_url hook_file ack_id doomed_id. It writes row ``ack_id`` (acknowledged: prints
``ACK <id>``), then turns the chaos hooks on (``strict.between_commits`` kills the process) and writes row
``doomed_id``: the store written first has it, the other never will. The phase in force (SQL or Redis
authoritative) is whatever the test published.
"""

from __future__ import annotations

import os
import sys
from decimal import Decimal

from dualwrite import hooks
from dualwrite.adapter import AdapterOptions, DualWriter
from dualwrite.config import StoreRef
from dualwrite.spec import MigrationSpec
from dualwrite.store import Store
from dualwrite.stores.redis import RedisStore


def redis_strict_spec(table: str, old: str = "pgold", new: str = "kv") -> MigrationSpec:
    """The test table (id, name, balance, version) moving to Redis with ``strict``, one hash per row."""
    return MigrationSpec.model_validate({
        "name": f"kvs-{table}", "old": old, "new": new, "strategy": "strict",
        "tables": [{"source": table, "version_column": "version",
                    "redis": {"key": "acct:{id}", "prefix": f"{table}:"}}]})


def main() -> None:
    table, pg_url, redis_url, hook_file, ack_id, doomed_id = sys.argv[1:7]
    spec = redis_strict_spec(table)
    writer = DualWriter(spec, Store(StoreRef("pgold", pg_url)), RedisStore("kv", redis_url),
                        options=AdapterOptions(background=False, strict_note_grace=1.0))
    writer.insert(table, {"id": int(ack_id), "name": "acknowledged", "balance": Decimal("1.00")})
    print(f"ACK {ack_id}", flush=True)
    os.environ[hooks.ENV] = hook_file
    writer.insert(table, {"id": int(doomed_id), "name": "doomed", "balance": Decimal("2.00")})
    print("NOT KILLED", flush=True)


if __name__ == "__main__":
    main()
