"""Many commands in one round trip, packed here: the backfill's write path into Redis.

redis-py's pipeline packs each argument through its encoder one call at a time, and for a backfill of
rows with a dozen fields that packing costs more than the server's work and the source's read together.
The commands the Redis kind writes are all text (keys, field names, canonical value texts), so a command
is packed as one string and encoded once (:func:`pack`), and a batch goes to the server as one buffer on
one pooled connection (:func:`run`), with redis-py's own retry of a broken connection. Replies are read
in order; an error reply is returned in its place (every reply is read, so the connection stays in step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

__all__ = ["pack", "run"]


def pack(args: Sequence[str]) -> bytes:
    """One command in RESP: ``*<n>`` then ``$<len>`` and each argument (lengths count UTF-8 bytes)."""
    body = "".join([f"${len(a)}\r\n{a}\r\n" for a in args])
    if body.isascii():  # one byte per character: the lengths above are byte lengths
        return f"*{len(args)}\r\n{body}".encode()
    parts = [f"*{len(args)}\r\n".encode()]
    for a in args:
        raw = a.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


def run(client: redis.Redis, commands: Sequence[bytes]) -> list[Any]:
    """Send packed commands in one round trip; their replies in order (an error reply as its exception)."""
    if not commands:
        return []
    payload = b"".join(commands)
    pool = client.connection_pool
    try:
        conn: Any = pool.get_connection()  # redis-py leaves send_packed_command and disconnect untyped
    except TypeError:  # redis-py before 5.3 wants a command name
        conn = pool.get_connection("EVALSHA")

    def exchange() -> list[Any]:
        conn.send_packed_command([payload])
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as exc:  # read whole: the connection stays in step
                replies.append(exc)
        return replies

    try:
        result: list[Any] = conn.retry.call_with_retry(exchange, lambda _error: conn.disconnect())
    except BaseException:
        conn.disconnect()  # replies may be left unread: never hand the connection on out of step
        raise
    finally:
        pool.release(conn)
    return result
