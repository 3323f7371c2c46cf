"""Preflight of a Redis new store: reach it, check each table's ``redis:`` section, and say whether it may
become authoritative.

A Redis store has no catalog and no privileges to look up: what can be checked before anything is written
is that the server answers, that every table says how it is kept (key template naming every key column
once, value ``hash`` or ``json``), that the spec asks nothing of Redis it cannot do (SQL reverse rules, a
strategy that needs triggers, a change log or a SQL transaction in the new store, the control tables), and -
because after write cutover Redis holds the only copy of new writes - whether it keeps its data on disk and never evicts
(:func:`dualwrite.keyvalue.authority_problems`), with the memory the tables need against ``maxmemory``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable

from dualwrite.errors import Problem, SpecError
from dualwrite.keyvalue import RedisFacts, authority_problems, read_facts
from dualwrite.mapping import TableMapping
from dualwrite.spec import MigrationSpec, Strategy, TableSpec
from dualwrite.store import Kind, TableInfo

__all__ = ["REDIS_STRATEGIES", "RedisLook", "estimate_bytes", "memory_note", "strategy_problems", "table_problems"]

#: strategies a Redis new store can serve: the adapter writes the other store itself, in the call or queued,
#: or notes the key in the authoritative store's outbox (after write cutover a Redis stream appended by the
#: script that writes the row: dualwrite.keyvalue.stream_outbox), or (strict) writes Redis by one script with
#: a note of the keys while the SQL transaction stays open (dualwrite.adapter._strict_kv)
REDIS_STRATEGIES = frozenset({Strategy.SYNC, Strategy.ASYNC, Strategy.OUTBOX, Strategy.STRICT})

#: bytes per value of each kind, as text in a hash field (a guess; the estimate says it is one)
_WIDTH = {Kind.INT: 8, Kind.BOOL: 5, Kind.DECIMAL: 12, Kind.FLOAT: 18, Kind.TEXT: 32, Kind.BYTES: 44,
          Kind.DATE: 10, Kind.TIME: 15, Kind.TIMESTAMP: 26, Kind.TIMESTAMPTZ: 32, Kind.JSON: 64, Kind.UUID: 36}
#: what Redis spends per key and per hash field beyond the text (dict entries, object headers)
_PER_KEY, _PER_FIELD = 72, 16


def estimate_bytes(mapping: TableMapping, rows: int) -> int:
    """Memory a table of ``rows`` rows needs in Redis (one hash per row): a rough estimate."""
    info = mapping.target_info
    per_row = _PER_KEY + 24  # the key itself: prefix, template and key values
    for name in mapping.target_columns:
        kind = info.columns[name].kind
        per_row += len(name) + _WIDTH.get(kind, 32) + _PER_FIELD
    return per_row * max(rows, 0)


def memory_note(facts: RedisFacts, needed: int) -> str:
    """One line: the tables' estimated size against ``maxmemory`` (and what is used already)."""
    mib = 2 ** 20
    limit = f"maxmemory {facts.maxmemory / mib:,.0f} MiB" if facts.maxmemory else "no maxmemory limit"
    return (f"Redis memory: the migrated tables need about {needed / mib:,.1f} MiB (estimate); "
            f"{facts.used_memory / mib:,.1f} MiB used, {limit}")


def strategy_problems(spec: MigrationSpec) -> list[str]:
    """Why the spec's strategies cannot write a Redis new store (empty when they can)."""
    wanted = {spec.strategy, *(spec.strategy_of(t.source) for t in spec.tables)}
    out: list[str] = []
    for s in sorted(wanted - REDIS_STRATEGIES):
        if s is Strategy.TRIGGERS:
            why = "Redis has no triggers to capture the writes of every writer after write cutover"
        else:
            why = "Redis has no change log (replication slot, binlog) for the relay to read after write cutover"
        out.append(f"strategy {s.value} cannot be used with a Redis new store: {why}; use strategy sync, "
                   "outbox, async or strict")
    return out


class RedisLook:
    """A Redis store opened for looking: PING, and the persistence, eviction and memory settings."""

    def __init__(self, name: str, url: str) -> None:
        from dualwrite.stores.redis import RedisStore  # noqa: PLC0415 - the redis client only when used

        self.store = RedisStore(name, url)
        self.facts: RedisFacts | None = None
        password = urllib.parse.urlsplit(url).password
        self.secrets = [password, urllib.parse.quote(password, safe="")] if password else []

    def open(self, timeout: float) -> str | None:
        """Reach the server and read its settings; why not, when it cannot be reached."""
        client = self.store.client(timeout=timeout)
        try:
            client.ping()
            self.facts = read_facts(client)
        except Exception as exc:  # noqa: BLE001 - any failure to talk to the server means unreachable
            return f"cannot connect: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        finally:
            client.close()
        return None

    def authority(self, where: str, tables: Iterable[tuple[TableMapping, int | None]]) -> tuple[list[Problem], str]:
        """Reasons Redis may not become authoritative at CUTOVER_WRITES, and the memory note."""
        assert self.facts is not None
        needed = sum(estimate_bytes(m, rows or 0) for m, rows in tables)
        return authority_problems(self.facts, where, needed_bytes=needed), memory_note(self.facts, needed)


def table_problems(entry: TableSpec, source: TableInfo, where: str) -> tuple[TableMapping | None, list[Problem]]:
    """The table spec compiled for Redis: the mapping, or every problem (spec and key template) at once."""
    from dualwrite.stores.redis import redis_mapping  # noqa: PLC0415

    problems = [Problem(f"{where}.reverse.{ocol}", "a reverse rule's expr is SQL run on the new store, and "
                                                   "Redis runs no SQL: use a transform")
                for ocol, rule in entry.reverse.items() if rule.expr is not None]
    try:
        mapping, _ = redis_mapping(entry, source, where)
    except SpecError as exc:
        return None, [*exc.problems, *problems]
    return (None if problems else mapping), problems
