"""The CUTOVER_WRITES gate's question for a Redis new store: may it become the authoritative store?

One gate metric, ``new_store_durable``: fails (with the settings to change) when the server keeps nothing on
disk or may evict keys (:func:`.redis_checks.authority_problems`), and says how much memory is used against
``maxmemory``. A failing gate is overridden only by an explicit forced advance (``dualwrite advance --force
--reason ...``), which the transition history records with its reason and ``gate_passed: false``.
"""

from __future__ import annotations

from typing import Any

from dualwrite.gates import GateMetric, Verdict
from dualwrite.keyvalue.redis_checks import authority_problems, read_facts

__all__ = ["DURABLE_METRIC", "durability_metric"]

DURABLE_METRIC = "new_store_durable"


def durability_metric(store: Any) -> GateMetric:
    """Read the Redis store's settings now and judge them (a server that cannot be read fails)."""
    client = store.client(timeout=10.0)
    try:
        facts = read_facts(client)
    except Exception as exc:  # noqa: BLE001 - unreadable is not durable: refuse, and say why
        return GateMetric(name=DURABLE_METRIC, value=0, threshold=1, op="==", verdict=Verdict.FAIL,
                          detail=f"Redis settings could not be read ({type(exc).__name__})")
    finally:
        client.close()
    problems = authority_problems(facts, f"store {store.name!r}")
    mib = 2 ** 20
    memory = (f"{facts.used_memory / mib:,.1f} MiB used of maxmemory {facts.maxmemory / mib:,.0f} MiB"
              if facts.maxmemory else f"{facts.used_memory / mib:,.1f} MiB used, no maxmemory limit")
    persistence = ", ".join(p for p, on in (("appendonly", facts.aof), (f"save {facts.rdb_save!r}",
                                                                         bool(facts.rdb_save.strip()))) if on)
    detail = "; ".join([p.message for p in problems] or
                       [f"keeps data on disk ({persistence}), maxmemory-policy {facts.policy}"]) + f"; {memory}"
    return GateMetric(name=DURABLE_METRIC, value=0 if problems else 1, threshold=1, op="==",
                      verdict=Verdict.FAIL if problems else Verdict.PASS, detail=detail)
