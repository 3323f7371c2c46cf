"""The adapter's knobs (:class:`AdapterOptions`): defaults that suit production, one place to read them."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AdapterOptions", "log_values"]


@dataclass
class AdapterOptions:
    """Knobs of the adapter; the defaults suit production."""

    sample_ratio: float = 1.0
    """Share of eligible reads that are shadow-compared (the control state's ``shadow_sample`` wins)."""
    shadow_timeout: float = 0.5
    shadow_batch_window: float = 0.02
    """Sampled reads are compared in batches: one read of the other store per table per window."""
    shadow_log_values: bool | None = None
    """Log shadow mismatches with keys and values in clear (None: ``$DUALWRITE_SHADOW_LOG_VALUES`` is 1 /
    true); by default a mismatch line carries the table, the column and short hashes only."""
    shadow_after_write_cutover: bool = False
    """CUTOVER_WRITES: also compare reads (optional in the phase table)."""
    ignore_fields: Mapping[str, Sequence[str]] = field(default_factory=dict)
    normalizers: Mapping[str, Mapping[str, Callable[[Any], Any]]] = field(default_factory=dict)
    recent_write_seconds: float = 2.0
    read_your_writes_seconds: float = 1.0
    """outbox / triggers: while the relay may still lag, this instance's reads of a key (Core API) or of a
    table (ORM) it wrote within this many seconds are served by the authoritative store, so a request after
    a write sees it even in CUTOVER_READS. 0 turns it off."""
    recheck_delay: float = 0.25
    recheck_attempts: int = 2
    phase_ttl: float = 1.0
    heartbeat_seconds: float = 5.0
    stats_window_seconds: float = 10.0
    secondary_timeout: float = 2.0
    """Statement / connect timeout (seconds) of every secondary write and shadow read."""
    fast_path: bool = True
    fast_path_max_delay: float = 0.2
    """A row image older than this (seconds since the commit) is not trusted: mirror_keys re-reads it."""
    delete_recheck_seconds: float = 2.0
    """A sync delete is mirrored again this much later, so a concurrent insert's late image cannot
    resurrect the row."""
    background: bool = True
    """Keep the phase fresh, flush stats and retry buffered repairs on a daemon thread."""
    workers: int = 4
    pool_size: int = 5
    ensure_schema: bool = True
    """Create the control, stats and outbox tables if missing (needs DDL rights)."""
    prometheus: bool = False
    prometheus_registry: Any = None
    fence_max_wait: float = 15.0
    """A write of a fenced scope (authority moving between the stores) waits at most this long for the fence
    to lift, then fails with :class:`WriteFencedError` (it never writes in the wrong order)."""
    fence_poll: float = 0.025
    """While fenced, the control state is read this often (bypassing the phase cache's ttl)."""
    strict_note_grace: float = 30.0
    """strict: a note of a write in flight older than this is swept into the repair queue (only a crash
    between the two commits, or a failed clean-up, leaves it there that long)."""
    async_queue_size: int = 10_000
    """async: keys queued at most; beyond it they go to the durable repair queue (the request never waits)."""
    async_workers: int = 2
    async_batch: int = 200
    async_batch_wait: float = 0.1
    """async: a worker that finds fewer than ``async_batch`` keys waits this long for more (the lag it adds
    buys fewer, larger mirror batches: less CPU beside the requests)."""
    spill_dir: str | None = None
    """Where repair keys the control store could not take are written at exit, and re-queued from at the
    next start (a local directory of the application's host; default ``$DUALWRITE_SPILL_DIR``, else the
    user's state directory, ``~/.local/state/dualwrite/spill``)."""


def log_values(option: bool | None) -> bool:
    """Whether shadow mismatches are logged with keys and values in clear (the option, else the environment)."""
    if option is not None:
        return option
    return os.environ.get("DUALWRITE_SHADOW_LOG_VALUES", "").strip().lower() in ("1", "true", "yes")
