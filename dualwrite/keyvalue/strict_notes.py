"""``strict`` on Redis: one script writes the rows of a strict write *and* a durable note of it ([T2-6]).

Redis cannot join a SQL transaction, and it does not need to: the SQL transaction of the other store stays
open while this script runs, and the script is Redis's whole "transaction" (nothing else runs on the server
while it does). What it writes, atomically:

- the rows (``DEL`` + ``HSET`` of a hash, ``SET`` of a JSON document, ``DEL`` of a deleted row); an
  insert-only row refuses the whole script when its key exists (then nothing is written);
- the note: ``ZADD`` of the write's token into ``__dualwrite__:<migration>:strict`` (scored by the server's
  clock, so a sweep finds the old ones), and the note itself under the token in the hash
  ``__dualwrite__:<migration>:strict:notes``: which store is authoritative, the keys (spec table, key JSON,
  Redis key), the images written, and the images the keys had **before** (read by the script itself).

The note exists exactly when Redis has the write, so it is the durable record of the window before the SQL
commit (:mod:`dualwrite.adapter._strict_kv` says what a sweep does with one). A script carries a deadline
(milliseconds of the server's clock): one that the server runs only after the client gave up on it (a
``CLIENT PAUSE``, a stalled server) writes nothing, so a request that failed on a Redis timeout can never
land later. The deadline is the client's clock plus a share of its socket timeout: it assumes the client's
and the server's clocks agree to well under that (NTP).

The keys live under ``__dualwrite__:<migration>:``, which row scans skip and abort / CLEANUP delete
(:func:`dualwrite.keyvalue.intact.remove_markers`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from dualwrite.keyvalue.intact import MARKER_PREFIX

__all__ = ["DeadlinePassedError", "StrictOp", "due", "forget", "landed", "notes_keys", "read_note", "restore",
           "write"]

DEADLINE_SHARE = 0.8
"""The script's deadline is this share of the client's socket timeout after it is sent."""

WRITE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = tonumber(ARGV[1])
if deadline > 0 and now > deadline then return {-1} end
local befores, existed, groups = {}, {1}, {}
local i = 4
for k = 3, #KEYS do
  local op, n = ARGV[i], tonumber(ARGV[i + 1])
  groups[k] = {op, i + 2, n}
  i = i + 2 + n
  local kind = redis.call('TYPE', KEYS[k]).ok
  if kind ~= 'none' and (op == 'hins' or op == 'jins') then return {0} end
  existed[#existed + 1] = (kind ~= 'none') and 1 or 0
  if kind == 'hash' then befores[#befores + 1] = redis.call('HGETALL', KEYS[k])
  elseif kind == 'string' then befores[#befores + 1] = redis.call('GET', KEYS[k])
  else befores[#befores + 1] = false end
end
for k = 3, #KEYS do
  local op, s, n = groups[k][1], groups[k][2], groups[k][3]
  redis.call('DEL', KEYS[k])
  if op == 'json' or op == 'jins' then redis.call('SET', KEYS[k], ARGV[s])
  elseif (op == 'hash' or op == 'hins') and n > 0 then redis.call('HSET', KEYS[k], unpack(ARGV, s, s + n - 1)) end
end
local note = cjson.decode(ARGV[3])
note['b'] = befores
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], cjson.encode(note))
return existed
"""
"""KEYS: the note set, the note hash, then the rows' keys. ARGV: deadline (ms, 0: none), token, the note (JSON),
then per row ``op, n, n arguments`` (op: ``hash`` / ``hins`` with field-value pairs, ``json`` / ``jins`` with the
document, ``del``). Returns ``{-1}`` (deadline passed), ``{0}`` (an insert found its key) or ``{1, existed...}``
(built as one table, never with ``unpack``: Lua's C stack holds 8000 values, and a script that fails after its
writes keeps them)."""


class DeadlinePassedError(TimeoutError):
    """Redis ran the strict script only after its deadline, so it wrote nothing (the client had given up)."""


@dataclass(frozen=True)
class StrictOp:
    """One row of a strict write in Redis: its key, the script's op and arguments, the image written
    (hash field-value pairs, a JSON document, or None for a delete)."""

    redis_key: str
    op: str
    args: list[str]
    after: list[str] | str | None


def notes_keys(migration: str) -> tuple[str, str]:
    """(the sorted set of tokens by time, the hash of notes by token) of a migration."""
    base = f"{MARKER_PREFIX}{migration}:strict"
    return base, f"{base}:notes"


def write(client: Any, migration: str, token: str, authoritative: str,
          rows: list[tuple[str, str, StrictOp]], timeout: float | None) -> list[bool] | None:
    """Run the script: ``rows`` are (spec table, key JSON, op). Returns whether each key existed before, or
    None when an insert found its key taken (nothing written). Raises :class:`DeadlinePassedError`."""
    zset, notes = notes_keys(migration)
    deadline = int((time.time() + timeout * DEADLINE_SHARE) * 1000) if timeout else 0
    note = {"a": authoritative, "k": [[table, key_json, op.redis_key] for table, key_json, op in rows],
            "w": [op.after for _, _, op in rows]}
    args: list[Any] = [deadline, token, json.dumps(note, separators=(",", ":"))]
    for _, _, op in rows:
        args += [op.op, len(op.args), *op.args]
    script = client.register_script(WRITE)  # EVALSHA, loading the script when the server lacks it
    reply = script(keys=[zset, notes, *[op.redis_key for _, _, op in rows]], args=args)
    status = int(reply[0])
    if status < 0:
        raise DeadlinePassedError("Redis ran the strict write after its deadline (timeout); nothing written")
    if status == 0:
        return None
    return [bool(int(e)) for e in reply[1:]]


def read_note(client: Any, migration: str, token: str) -> dict[str, Any] | None:
    """The note of a strict write (None: Redis does not have that write, or its note was cleared)."""
    raw = client.hget(notes_keys(migration)[1], token)
    return None if raw is None else dict(json.loads(raw))


def landed(client: Any, migration: str, token: str) -> bool:
    """Does Redis have the strict write ``token`` (its script ran, though its reply was lost)?"""
    return bool(client.hexists(notes_keys(migration)[1], token))


def forget(client: Any, migration: str, tokens: list[str]) -> None:
    """Clear the notes of finished strict writes (one round trip)."""
    if not tokens:
        return
    zset, notes = notes_keys(migration)
    pipe = client.pipeline(transaction=True)
    pipe.zrem(zset, *tokens)
    pipe.hdel(notes, *tokens)
    pipe.execute()


def due(client: Any, migration: str, older_than: float, limit: int = 1000) -> list[tuple[str, dict[str, Any]]]:
    """(token, note) of notes older than ``older_than`` seconds by the server's clock (a note without its
    text, left by a partial clean-up, comes back as an empty note)."""
    zset, notes = notes_keys(migration)
    sec, usec = client.time()
    cutoff = int(sec) * 1000 + int(usec) // 1000 - int(older_than * 1000)
    tokens = [t.decode() if isinstance(t, bytes) else str(t)
              for t in client.zrangebyscore(zset, "-inf", cutoff, start=0, num=limit)]
    if not tokens:
        return []
    raws = client.hmget(notes, tokens)
    return [(t, dict(json.loads(raw)) if raw is not None else {}) for t, raw in zip(tokens, raws, strict=True)]


def _as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _current(pipe: Any, key: str) -> list[str] | str | None:
    kind = _as_text(pipe.type(key))
    if kind == "hash":
        got = pipe.hgetall(key)
        return [x for k, v in sorted((_as_text(k), _as_text(v)) for k, v in got.items()) for x in (k, v)]
    if kind == "string":
        return _as_text(pipe.get(key))
    return None if kind == "none" else f"<{kind}>"


def _pairs_sorted(pairs: list[str]) -> list[str]:
    return [x for k, v in sorted(zip(pairs[::2], pairs[1::2], strict=True)) for x in (k, v)]


def _image(value: Any) -> list[str] | str | None:
    """A key's image as a note holds it, in the form :func:`_current` reads: a hash's field-value pairs, a
    string, or None for an absent key. The note went through the script's cjson, which gives an empty Lua
    table back as ``{}`` and a missing before image as ``false``: a hash with no fields is no key at all in
    Redis (the script's ``DEL`` then no ``HSET``), so both are None - exactly what the key holds."""
    if isinstance(value, dict | list) and not value:
        return None
    if isinstance(value, list):
        return _pairs_sorted([str(x) for x in value])
    if isinstance(value, str):
        return value
    return None


def restore(client: Any, key: str, before: Any, after: Any) -> bool:
    """Put ``key`` back as it was before a strict write whose other store never committed - only while it
    still holds that write's image (a later write is never undone). Returns whether it was put back.
    ``before`` / ``after``: the note's images (see :func:`_image`)."""
    import redis  # noqa: PLC0415 - only where Redis is used

    want, before = _image(after), _image(before)
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(key)
            if _current(pipe, key) != want:
                pipe.unwatch()
                return False
            pipe.multi()
            pipe.delete(key)
            if isinstance(before, list):
                pipe.hset(key, mapping=dict(zip(before[::2], before[1::2], strict=True)))
            elif isinstance(before, str):
                pipe.set(key, before)
            pipe.execute()
            return True
        except redis.WatchError:
            return False  # written meanwhile: that write stands
