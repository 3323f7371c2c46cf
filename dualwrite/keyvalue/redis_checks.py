"""May this Redis become the authoritative store? Persistence, eviction and memory, read from the server.

After write cutover the new store holds the only copy of new writes. A Redis that keeps nothing on disk
(no AOF, no RDB snapshots) loses every one of them on a restart, and a ``maxmemory-policy`` that evicts
drops keys silently when memory runs short: either is a lost acknowledged write, so ``check`` and the
CUTOVER_WRITES gate refuse such a Redis unless the operator records an explicit override. The memory the
table needs (an estimate) is compared with ``maxmemory`` while there is still time to change it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dualwrite.errors import Problem

__all__ = ["EVICTING_POLICIES", "RedisFacts", "authority_problems", "read_facts"]

EVICTING_POLICIES = frozenset({"allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu",
                               "volatile-random", "volatile-ttl"})


@dataclass(frozen=True)
class RedisFacts:
    """What the checks need from one Redis server (read by :func:`read_facts`)."""

    aof: bool
    rdb_save: str  # the ``save`` setting: "" when snapshots are off
    maxmemory: int  # bytes; 0 is no limit
    policy: str
    used_memory: int
    config_readable: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def persistent(self) -> bool:
        return self.aof or bool(self.rdb_save.strip())


def _config(client: Any, name: str) -> str | None:
    try:
        got = client.config_get(name)
    except Exception:  # noqa: BLE001 - managed Redis often disables CONFIG: fall back to INFO
        return None
    value = got.get(name)
    return value.decode() if isinstance(value, bytes) else value


def read_facts(client: Any) -> RedisFacts:
    """Read persistence, eviction and memory settings; ``CONFIG`` if allowed, else ``INFO``."""
    info_p = client.info("persistence")
    info_m = client.info("memory")
    aof_cfg, save_cfg = _config(client, "appendonly"), _config(client, "save")
    policy_cfg, maxmem_cfg = _config(client, "maxmemory-policy"), _config(client, "maxmemory")
    readable = None not in (aof_cfg, save_cfg, policy_cfg, maxmem_cfg)
    notes = [] if readable else ["CONFIG GET is not allowed: settings read from INFO"]
    aof = aof_cfg == "yes" if aof_cfg is not None else bool(int(info_p.get("aof_enabled", 0)))
    save = save_cfg if save_cfg is not None else ("unknown" if info_p.get("rdb_last_save_time") else "")
    policy = policy_cfg if policy_cfg is not None else str(info_m.get("maxmemory_policy", "noeviction"))
    maxmemory = int(maxmem_cfg) if maxmem_cfg is not None else int(info_m.get("maxmemory", 0))
    return RedisFacts(aof=aof, rdb_save=save or "", maxmemory=maxmemory, policy=policy,
                      used_memory=int(info_m.get("used_memory", 0)), config_readable=readable, notes=notes)


def authority_problems(facts: RedisFacts, where: str, *, needed_bytes: int | None = None) -> list[Problem]:
    """Every reason this Redis may not become authoritative, each with the setting to change."""
    out: list[Problem] = []
    if not facts.persistent:
        out.append(Problem(where, "Redis keeps nothing on disk (appendonly no, save \"\"): a restart after write "
                                  "cutover loses every write made since; set `appendonly yes` (CONFIG SET "
                                  "appendonly yes, and in redis.conf so a restart keeps it)"))
    if facts.policy in EVICTING_POLICIES:
        out.append(Problem(where, f"maxmemory-policy {facts.policy} evicts keys when memory runs short (an "
                                  "evicted key is a lost write); set `maxmemory-policy noeviction`"))
    if needed_bytes is not None and facts.maxmemory:
        free = facts.maxmemory - facts.used_memory
        if needed_bytes > free:
            out.append(Problem(where, f"the migrated tables need about {needed_bytes / 2**20:,.0f} MiB but only "
                                      f"{max(free, 0) / 2**20:,.0f} MiB of maxmemory "
                                      f"{facts.maxmemory / 2**20:,.0f} MiB is free; raise `maxmemory`"))
    return out
