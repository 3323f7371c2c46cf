"""The store side of ``outbox`` when the new store is Redis: the SQL outbox table on the old store, a Redis
stream on the new one ([T2-6]).

While the old store is authoritative the adapter notes keys in its ``dualwrite_outbox`` table, exactly as
between two SQL stores (:class:`~dualwrite.capture.keylog_side.KeyLogSide` drains it, old -> new). After write
cutover Redis is authoritative and the adapter appends each key to the stream
``__dualwrite__:<migration>:outbox`` in the script that writes the row (:mod:`dualwrite.keyvalue.stream_outbox`).
The relay reads the stream through its consumer group: first what it read itself and did not acknowledge (a
batch whose mirror failed), then entries a dead relay left pending longer than
:attr:`StreamOutboxSide.lease_seconds` (``XAUTOCLAIM``), then new ones (``XREADGROUP``); it mirrors their
keys Redis -> SQL with the reversed mapping, and only then acknowledges and removes them. A relay killed at
any point redoes at most its batch, after the lease: harmless, a mirror copies the row as it is now.

With a SQL new store every method falls through to :class:`KeyLogSide`.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from dualwrite import hooks, outbox
from dualwrite.capture.keylog_side import IN_FLIGHT_SECONDS, MAX_PENDING_READ, KeyLogSide
from dualwrite.capture.store_side import RETIRED_OLD, Backlog, Key, RelayStores
from dualwrite.keys import decode_key
from dualwrite.keyvalue import stream_outbox as so
from dualwrite.mapping import TableMapping
from dualwrite.mirror import normal_key
from dualwrite.relay import RelayResult, mirror_logged
from dualwrite.stats import RELAY, RELAY_LAG, Stats
from dualwrite.store import Store
from dualwrite.stores import as_redis, is_redis

__all__ = ["StreamOutboxSide"]

CLIENT_TIMEOUT = 10.0
CATCH_UP_LEASE_SECONDS = 5.0
"""A catch-up (under the write fence, before a rollback) does not wait out a whole lease: it takes over entries
a relay has held this long. Taking one over from a relay that is merely slow costs a second mirror of the
same keys, which is harmless (a mirror copies the row as it is)."""


class StreamOutboxSide(KeyLogSide):
    """``outbox`` capture: the SQL key log on each SQL store, the stream on a Redis new store."""

    def __init__(self, key_log: str, *, lease_seconds: float = so.LEASE_SECONDS, consumer: str | None = None) -> None:
        super().__init__(key_log, capture_triggers=False)
        self.lease_seconds = lease_seconds
        self.consumer = consumer or f"relay@{socket.gethostname()}:{os.getpid()}"

    @staticmethod
    def _client(store: Any) -> Any:
        return as_redis(store).client(timeout=CLIENT_TIMEOUT)

    def setup(self, rs: RelayStores) -> tuple[list[str], list[str]]:
        if not is_redis(rs.new):
            return super().setup(rs)
        outbox.ensure_log(rs.old, self.key_log)
        stream = so.stream_key(rs.spec.name)
        client = self._client(rs.new)
        try:
            so.ensure_group(client, stream)
            so.forget_idle_consumers(client, stream, max(self.lease_seconds, 600.0))
        finally:
            client.close()
        return [f"{rs.old.name}/{self.key_log}", f"{rs.new.name}/{stream}"], []

    def drain_round(self, rs: RelayStores, phase: str, *, limit: int, max_seconds: float, stats: Stats | None,
                    should_stop: Callable[[], bool]) -> RelayResult:
        if not is_redis(rs.new):
            return super().drain_round(rs, phase, limit=limit, max_seconds=max_seconds, stats=stats,
                                       should_stop=should_stop)
        from dualwrite.relay import drain  # noqa: PLC0415 - the old store's SQL outbox, as KeyLogSide drains it

        total = drain(rs.old, rs.new, rs.spec.name, rs.mapping_for, logs=(self.key_log,), directions=("old",),
                      limit=limit, max_seconds=max_seconds, control_store=rs.control, stats=stats,
                      should_stop=should_stop)
        while not should_stop():
            res = self._stream_batch(rs, limit=limit, discard=phase in RETIRED_OLD)
            if not res.entries:
                break
            total += res
            if stats is not None:
                stats.record(counts=[(RELAY, "entries", res.entries), (RELAY, "mirrored", res.mirrored),
                                     (RELAY, "failed", res.failed), (RELAY, "discarded", res.discarded)])
                stats.gauge(RELAY_LAG, res.lag_seconds)
            if res.entries < limit:
                break
        return total

    def _stream_batch(self, rs: RelayStores, *, limit: int, discard: bool, lease: float | None = None
                      ) -> RelayResult:
        """One batch of the stream: its own unacknowledged entries, reclaimed ones, then new ones; mirrored,
        then acknowledged."""
        out = RelayResult()
        stream = so.stream_key(rs.spec.name)
        client = self._client(rs.new)
        try:
            if not so.ensure_group(client, stream, create=False):
                return out  # no stream: nothing was noted yet (or CLEANUP removed it)
            entries = so.read_new(client, stream, self.consumer, limit=limit, own=True)
            if len(entries) < limit:
                entries += so.claim(client, stream, self.consumer, limit=limit - len(entries),
                                    lease_seconds=self.lease_seconds if lease is None else lease)
            if len(entries) < limit:
                entries += so.read_new(client, stream, self.consumer, limit=limit - len(entries))
            entries = list({e.id: e for e in entries}.values())  # an own entry may be claimed again
            if not entries:
                return out
            hooks.point("relay.stream_after_read")  # read, pending under this relay, nothing mirrored yet
            out.entries, out.batches = len(entries), 1
            out.lag_seconds = max(e.age_seconds for e in entries)
            if discard:
                out.discarded += len(entries)
            else:
                by_table: dict[str, list[Key]] = defaultdict(list)
                for e in entries:
                    if e.table and e.key:
                        by_table[e.table].append(tuple(e.key))
                    else:
                        out.discarded += 1  # not an entry of ours: nothing to mirror
                mirror_logged(rs.new, rs.old, rs.spec.name, rs.mapping_for, by_table, reverse=True,
                              control_store=rs.control, out=out)
            so.acknowledge(client, stream, [e.id for e in entries])
            return out
        finally:
            client.close()

    def backlog(self, rs: RelayStores) -> Backlog:
        if not is_redis(rs.new):
            return super().backlog(rs)
        out = Backlog()
        with contextlib.suppress(Exception):  # a log that does not exist yet holds nothing
            out.remaining, out.lag_seconds = outbox.log_depth(rs.old, rs.spec.name, log=self.key_log)
        client = self._client(rs.new)
        try:
            n, age = so.depth(client, so.stream_key(rs.spec.name))
        finally:
            client.close()
        out.remaining += n
        if age is not None and (out.lag_seconds is None or age > out.lag_seconds):
            out.lag_seconds = age
        return out

    def catch_up_points(self, rs: RelayStores, sides: Sequence[str]) -> list[Any]:
        if not is_redis(rs.new):
            return super().catch_up_points(rs, sides)
        points = super().catch_up_points(rs, [s for s in sides if s == "old"])
        if "new" in sides:
            client = self._client(rs.new)
            try:
                point = so.last_id(client, so.stream_key(rs.spec.name))
            finally:
                client.close()
            if point is not None:
                points.append(("new", rs.new, point))
        return points

    def behind(self, rs: RelayStores, points: Sequence[Any]) -> tuple[int, tuple[str, ...]]:
        if not is_redis(rs.new):
            return super().behind(rs, points)
        sql = [p for p in points if p[0] != "new"]
        total, waiting = super().behind(rs, sql)
        out = list(waiting)
        for _side, store, point in (p for p in points if p[0] == "new"):
            client = self._client(store)
            try:
                n = so.behind(client, so.stream_key(rs.spec.name), point)
            finally:
                client.close()
            total += n
            if n:
                out.append("new")
        return total, tuple(out)

    def catch_up_round(self, rs: RelayStores, sides: tuple[str, ...], phase: str, *, limit: int,
                       should_stop: Callable[[], bool]) -> RelayResult:
        if not is_redis(rs.new):
            return super().catch_up_round(rs, sides, phase, limit=limit, should_stop=should_stop)
        total = RelayResult()
        if "old" in sides:
            total += super().catch_up_round(rs, ("old",), phase, limit=limit, should_stop=should_stop)
        if "new" in sides and not should_stop():
            total += self._stream_batch(rs, limit=limit, discard=phase in RETIRED_OLD,
                                        lease=min(self.lease_seconds, CATCH_UP_LEASE_SECONDS))
        return total

    def pending_keys(self, store: Store, control_store: Store, migration: str, spec_table: str,
                     mapping: TableMapping) -> set[Key]:
        if not is_redis(store):
            return super().pending_keys(store, control_store, migration, spec_table, mapping)
        client = self._client(store)
        try:
            entries = so.recent(client, so.stream_key(migration), IN_FLIGHT_SECONDS, cap=MAX_PENDING_READ)
        finally:
            client.close()
        out: set[Key] = set()
        for e in entries:
            if e.table not in (spec_table, mapping.source_table):
                continue
            try:
                key = decode_key(e.key, mapping.key_kinds)
            except (ValueError, TypeError):
                continue
            if key is not None:
                out.add(normal_key(key))
        return out
