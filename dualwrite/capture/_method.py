"""What a capture method is: how changes reach the other store, as facts the rest of the system reads.

One value of :class:`CaptureMethod` per write strategy, one module each (``strict``, ``sync``, ``async_``,
``outbox``, ``triggers``, ``cdc``), looked up by :func:`dualwrite.capture.method_for`. Nothing else compares
strategy names: the workflow, the activities, the gates and the adapter ask these facts instead, so a new
method is one module plus its tests (docs/architecture.md, "Capture methods").

The facts are plain data so that deterministic workflow code may read them; what a method does against a
store (install triggers, open a replication slot, drain its log) lives in the store-side modules the method
names, called by the relay activities."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["CaptureMethod", "Evidence"]


class Evidence(StrEnum):
    """Where the cutover gates' shadow-match evidence comes from."""

    ADAPTER = "adapter"  # the application adapters' shadow reads
    WORKER = "worker"  # no adapter in the application: the worker samples rows from both stores


@dataclass(frozen=True)
class CaptureMethod:
    """How one write strategy carries a change from the authoritative store to the other one."""

    name: str
    summary: str
    inline: bool
    """The adapter writes the other store itself, inside the application's call (strict, sync, async): no key
    log, no relay; only these may be chosen per table."""
    through_adapter: bool
    """The application must write through the adapter; a write that bypasses it is not carried (the bypass
    capture of docs/architecture.md watches for those)."""
    key_log: str | None
    """The key log a relay drains on each store (``dualwrite_outbox`` / ``dualwrite_changelog``), or None:
    inline methods have none, ``cdc`` reads the database's own log."""
    database_capture: bool
    """Every writer's changes are captured by the database (triggers, log decoding), the adapter's or not:
    the write cutover denies writes on the losing side while the capture drains (the fence of [T2-1])."""
    evidence: Evidence
    relay_lag_gated: bool
    """The relay's lag is a cutover gate (the capture runs behind the application's writes)."""
    latency_measurable: bool
    """The adapter's whole call can be timed against the authoritative write (the p99 latency gate)."""
    notes_keys: bool
    """The adapter appends each written key to the key log inside the authoritative transaction (outbox)."""
    writes_before_commit: bool
    """The adapter writes and commits the other store inside the open authoritative transaction, before its
    commit; either store failing fails the request (strict)."""
    mirrors_after_commit: bool
    """The adapter writes the other store right after the authoritative commit, before the call returns,
    from the committed row image where it has one (the fast path), else by re-reading the row (sync)."""
    queues_keys: bool
    """The adapter queues the keys for its background workers after the commit; the call does not wait
    (async)."""

    all_or_nothing: bool = False
    """A request that raised changed neither store (once repairs ran): the application may retry it or
    report it as not done. Only ``strict`` promises it (the others never fail a request for the other store)."""

    @property
    def in_call(self) -> bool:
        """The other store has the write when the application's call returns (strict, sync): a read right
        after it may be served by either store, and the committed row image is worth returning."""
        return self.writes_before_commit or self.mirrors_after_commit

    @property
    def relayed(self) -> bool:
        """A relay workflow carries the changes (a key log or the database's log)."""
        return not self.inline

    @property
    def reads_database_log(self) -> bool:
        """Changes come from the database's replication log (a slot / the binlog), not a key log."""
        return self.database_capture and self.key_log is None
