"""The control plane: publish a migration's state for applications, wait for their phase barrier, publish
its spec for the workers that resolve spec references."""

from __future__ import annotations

import time

from temporalio import activity

from activities.errors import mapped_errors
from activities.heartbeat import heartbeating, raise_if_stopping, sleep
from activities.stores import StoreCache
from dualwrite import control
from workflows.models import ActivityNames, BarrierStatus, ControlInput, PublishSpecInput

__all__ = ["ControlActivities"]


class ControlActivities:
    """Publish and barrier, sharing the worker's :class:`StoreCache`; an application instance counts as live
    for the barrier when its heartbeat is at most ``live_seconds`` old (unless the input says otherwise)."""

    def __init__(self, stores: StoreCache, live_seconds: float) -> None:
        self.stores = stores
        self.live_seconds = live_seconds

    @activity.defn(name=ActivityNames.PUBLISH_STATE, no_thread_cancel_exception=True)
    def publish_state(self, inp: ControlInput) -> None:
        """Publish (phase, epoch, paused, overrides) for applications; idempotent, never rewinds."""
        with mapped_errors(), heartbeating():
            store = self.stores.control_store(inp.control_store)
            control.publish_state(store, inp.migration, inp.phase.value, inp.epoch, paused=inp.paused,
                                  overrides=inp.overrides)

    @activity.defn(name=ActivityNames.PUBLISH_SPEC, no_thread_cancel_exception=True)
    def publish_spec(self, inp: PublishSpecInput) -> None:
        """Store the spec under its digest in the control store (idempotent), before the workflow hands
        out :class:`~workflows.models.SpecRef` references to it."""
        with mapped_errors(), heartbeating():
            store = self.stores.control_store(inp.spec.control)
            control.publish_spec(store, inp.spec.name, inp.digest, inp.spec.model_dump_json())

    @activity.defn(name=ActivityNames.AWAIT_BARRIER, no_thread_cancel_exception=True)
    def await_barrier(self, inp: ControlInput) -> BarrierStatus:
        """Poll until every live instance has seen the epoch, for at most ``max_wait_seconds``.

        Polling inside one activity keeps a slow barrier at a handful of history events."""
        with mapped_errors():
            store = self.stores.control_store(inp.control_store)
            live = inp.live_seconds if inp.live_seconds is not None else self.live_seconds
            deadline = time.monotonic() + inp.max_wait_seconds
            while True:
                state = control.barrier(store, inp.migration, inp.epoch, live)
                status = BarrierStatus(passed=state.passed, epoch=inp.epoch, live_instances=state.live,
                                       lagging=state.lagging[:20])
                if state.passed or time.monotonic() >= deadline:
                    return status
                activity.heartbeat(status)
                sleep(inp.poll_seconds)
                raise_if_stopping()
