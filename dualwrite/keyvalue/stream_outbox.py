"""The outbox of a Redis new store while it is authoritative: a Redis stream, ``__dualwrite__:<migration>:outbox``.

SQL notes a written key in the writing transaction (:mod:`dualwrite.outbox`); Redis has no transaction with
the application's SQL, but it runs a script atomically. So the adapter's write of a row and the append of
its entry (``XADD``) are one script (:data:`NOTED_DELETE` here, the row write's noted form in
:mod:`dualwrite.stores.redis._table`): the entry is appended first, and only when the write will happen, so
a failing append (a key of another type under the stream's name) fails the write before anything changed.
Both or neither - short of the server dying inside the script, which Redis' AOF replays whole or not at all.

The relay reads through one consumer group (:data:`GROUP`): new entries with ``XREADGROUP``, and entries a
relay read but never acknowledged (it crashed) with ``XAUTOCLAIM`` once their lease (:data:`LEASE_SECONDS`
of idleness) ran out. After mirroring an entry's key into SQL it ``XACK``s and ``XDEL``s the entry in one
``MULTI``, so the stream holds exactly what still waits (``XLEN`` is the backlog). Only keys are logged,
never row values: the relay mirrors the row as it is when it runs, so a repeated entry is harmless.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from dualwrite.keyvalue.intact import MARKER_PREFIX

__all__ = ["GROUP", "LEASE_SECONDS", "NOTED_DELETE", "StreamEntry", "acknowledge", "age_of", "behind", "claim",
           "depth", "drop_stream", "ensure_group", "forget_idle_consumers", "last_id", "read_new", "recent",
           "stream_key"]

GROUP = "dualwrite-relay"
"""The relays' consumer group: every relay of a migration reads through it, each under its own name."""
LEASE_SECONDS = 60.0
"""An entry read and not acknowledged for this long belongs to a relay that died: another one claims it."""

NOTED_DELETE = """
redis.call('XADD', KEYS[2], '*', 'table', ARGV[1], 'key', ARGV[2])
return redis.call('DEL', KEYS[1])
"""
"""KEYS: the row's key, the stream; ARGV: spec table, key JSON. The entry first: if it fails, nothing changed."""


def stream_key(migration: str) -> str:
    """The stream holding a migration's outbox in Redis (a dualwrite key: never read as a row)."""
    return f"{MARKER_PREFIX}{migration}:outbox"


@dataclass(frozen=True)
class StreamEntry:
    id: str
    table: str
    key: list[Any]
    age_seconds: float


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _now_ms(client: redis.Redis) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def age_of(entry_id: str, now_ms: int) -> float:
    """Seconds since an entry was appended (its id starts with the server's clock in milliseconds)."""
    return max(0.0, (now_ms - int(entry_id.split("-", 1)[0])) / 1000.0)


def _entries(raw: Sequence[Any], now_ms: int) -> list[StreamEntry]:
    out: list[StreamEntry] = []
    for entry_id, fields in raw:
        eid = _text(entry_id)
        if not fields:  # deleted while pending: nothing to mirror, only to acknowledge
            out.append(StreamEntry(eid, "", [], 0.0))
            continue
        f = {_text(k): _text(v) for k, v in fields.items()}
        try:
            key = list(json.loads(f["key"]))
        except (KeyError, ValueError, TypeError):
            key = []  # not an entry of ours: acknowledged and dropped by the caller (it names no table)
        out.append(StreamEntry(eid, f.get("table", ""), key, age_of(eid, now_ms)))
    return out


def ensure_group(client: redis.Redis, stream: str, *, create: bool = True) -> bool:
    """Create the relays' group if missing, from id 0 so entries appended before are read; ``create``: the
    stream too (the relay's set-up). False: no stream (not ``create``), so nothing to read - a drain never
    recreates a stream CLEANUP removed."""
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=create)
    except redis.ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return True
        if not create and "requires the key to exist" in str(exc):
            return False
        raise
    return True


def claim(client: redis.Redis, stream: str, consumer: str, *, limit: int, lease_seconds: float
          ) -> list[StreamEntry]:
    """Entries another relay read and left unacknowledged longer than the lease, now ``consumer``'s."""
    out: list[Any] = []
    start = "0-0"
    while len(out) < limit:
        reply = client.xautoclaim(stream, GROUP, consumer, int(lease_seconds * 1000), start_id=start,
                                  count=limit - len(out))
        start, got = _text(reply[0]), reply[1]
        out += got
        if start == "0-0" or not got:
            break
    return _entries(out, _now_ms(client))


def read_new(client: redis.Redis, stream: str, consumer: str, *, limit: int, own: bool = False
             ) -> list[StreamEntry]:
    """Entries no relay has read yet (they stay pending under ``consumer`` until acknowledged); ``own``:
    instead the entries ``consumer`` itself read and has not acknowledged (a batch whose mirror failed, say,
    with the SQL store unreachable: retried at once, not after the lease)."""
    reply: Any = client.xreadgroup(GROUP, consumer, {stream: "0" if own else ">"}, count=limit)
    if isinstance(reply, dict):  # RESP3: {stream: [entries]}
        found: Any = next(iter(reply.values()), [[]])
        raw = found[0] if found and isinstance(found[0], list) else found
    else:
        raw = reply[0][1] if reply else []
    return _entries(raw, _now_ms(client)) if raw else []


def acknowledge(client: redis.Redis, stream: str, ids: Sequence[str]) -> None:
    """Handled: acknowledged and removed together, so the stream holds exactly what still waits."""
    for start in range(0, len(ids), 500):
        part = list(ids[start:start + 500])
        pipe = client.pipeline(transaction=True)
        pipe.xack(stream, GROUP, *part)
        pipe.xdel(stream, *part)
        pipe.execute()


def depth(client: redis.Redis, stream: str) -> tuple[int, float | None]:
    """(entries waiting, age in seconds of the oldest)."""
    n = int(client.xlen(stream))
    if not n:
        return 0, None
    first = client.xrange(stream, count=1)
    return n, age_of(_text(first[0][0]), _now_ms(client)) if first else None


def last_id(client: redis.Redis, stream: str) -> str | None:
    """The id of the newest entry waiting (None when none waits)."""
    newest = client.xrevrange(stream, count=1)
    return _text(newest[0][0]) if newest else None


def behind(client: redis.Redis, stream: str, point: str, *, cap: int = 100_000) -> int:
    """Entries at or before ``point`` still waiting (at most ``cap`` counted)."""
    return len(client.xrange(stream, max=point, count=cap) or [])


def recent(client: redis.Redis, stream: str, seconds: float, *, cap: int) -> list[StreamEntry]:
    """Entries younger than ``seconds`` still waiting (the keys a verification counts as in flight)."""
    now = _now_ms(client)
    raw = client.xrange(stream, min=str(max(0, now - int(seconds * 1000))), count=cap)
    return _entries(raw or [], now)


def drop_stream(store: Any, migration: str) -> int:
    """Delete a migration's outbox stream from a Redis store (CLEANUP, abort); returns the entries it held."""
    client = store.client(timeout=10.0)
    try:
        stream = stream_key(migration)
        pipe = client.pipeline(transaction=True)
        pipe.xlen(stream)
        pipe.delete(stream)
        n, _deleted = pipe.execute()
        return int(n)
    finally:
        client.close()


def forget_idle_consumers(client: redis.Redis, stream: str, idle_seconds: float) -> list[str]:
    """Remove the group's consumers that hold nothing and were idle longer than ``idle_seconds`` (relays of
    processes long gone; every relay process reads under a name of its own). Returns their names."""
    gone: list[str] = []
    try:
        consumers: Any = client.xinfo_consumers(stream, GROUP)
    except redis.ResponseError:
        return gone  # no stream or no group yet
    for c in consumers:
        info = {_text(k): v for k, v in c.items()}
        if int(info.get("pending", 0)) == 0 and int(info.get("idle", 0)) > idle_seconds * 1000:
            name = _text(info["name"])
            client.xgroup_delconsumer(stream, GROUP, name)
            gone.append(name)
    return gone
