"""Every activity of the worker, in one object: thin adapters from Temporal to the dualwrite core.

The activities live by phase, one small module each: :mod:`activities.prepare`, :mod:`activities.control`
(publish, barrier), :mod:`activities.backfill`, :mod:`activities.verify`, :mod:`activities.repair`,
:mod:`activities.gates` (gates, rollback triggers), :mod:`activities.cleanup`, :mod:`activities.relay`,
:mod:`activities.sample`, :mod:`activities.abort`, :mod:`activities.bypass`. They own heartbeats
(:mod:`activities.heartbeat`) and error mapping (:mod:`activities.errors`); the work is in ``dualwrite/``.
Their names (``@activity.defn(name=...)``) are what recorded histories schedule: they never change.

Every activity is synchronous (the drivers block) and runs on the worker's thread pool.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from activities.abort import AbortActivities
from activities.backfill import BackfillActivities
from activities.bypass import BypassActivities
from activities.cleanup import CleanupActivities
from activities.control import ControlActivities
from activities.errors import mapped_errors, safe_message, to_application_error
from activities.gates import GateActivities
from activities.heartbeat import heartbeating
from activities.owners import OwnerCheck
from activities.prepare import PrepareActivities
from activities.relay import RelayActivities
from activities.repair import RepairActivities
from activities.sample import SampleActivities
from activities.stores import StoreCache
from activities.verify import VerifyActivities
from dualwrite import control
from dualwrite.config import StoreResolver
from dualwrite.inflight import without_keys
from dualwrite.relay import repair_authority
from dualwrite.retire import retire_table as _retire_table

__all__ = [
    "LIVE_SECONDS_ENV",
    "DualwriteActivities",
    "_retire_table",
    "heartbeating",
    "mapped_errors",
    "repair_authority",
    "safe_message",
    "to_application_error",
    "without_keys",
]

LIVE_SECONDS_ENV = "DUALWRITE_INSTANCE_LIVE_SECONDS"


class DualwriteActivities:
    """All activities of the project, sharing one :class:`StoreCache` per worker."""

    def __init__(self, resolver: StoreResolver, *, pool_size: int = 8, live_seconds: float | None = None) -> None:
        self.stores = StoreCache(resolver, pool_size=pool_size)
        self.owners = OwnerCheck()
        env = os.environ.get(LIVE_SECONDS_ENV)
        self.live_seconds = live_seconds if live_seconds is not None else float(env) if env else \
            control.DEFAULT_LIVE_SECONDS
        self.prepare = PrepareActivities(self.stores, self.owners)
        self.control = ControlActivities(self.stores, self.live_seconds)
        self.backfill = BackfillActivities(self.stores)
        self.verify = VerifyActivities(self.stores)
        self.repair = RepairActivities(self.stores)
        self.gates = GateActivities(self.stores)
        self.cleanup = CleanupActivities(self.stores)
        self.relay = RelayActivities(self.stores)
        self.sample = SampleActivities(self.stores)
        self.abort = AbortActivities(self.stores)
        self.bypass = BypassActivities(self.stores)

    def all(self) -> list[Callable[..., Any]]:
        """Every activity the worker registers (the phase work's and the long pollers')."""
        return [self.prepare.prepare, self.control.publish_state, self.control.publish_spec,
                self.control.await_barrier,
                self.backfill.plan_ranges, self.backfill.copy_range, self.backfill.clear_checkpoints,
                self.verify.verify_table, self.repair.drain_repairs, self.gates.evaluate_gate,
                self.gates.watch_rollback_triggers, self.cleanup.retire_old_store, *self.relay.all(),
                *self.sample.all(), *self.abort.all(), *self.bypass.all()]

    def close(self) -> None:
        self.stores.close()
