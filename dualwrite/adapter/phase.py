"""What a phase means for one request, and how an application instance learns the phase.

:data:`RULES` is the phase table (docs/architecture.md) as data: which store is authoritative, which one is mirrored,
where reads go and whether reads are shadow-compared. :class:`PhaseCache` reads the published state from
the control tables, keeps it for about a second (a request never waits for the control store when the
cache is warm), and records the epoch this instance acts on: the phase barrier the workflow waits on before
it relies on a new phase. An instance records an epoch only *after* it has switched to it.

Per-tenant / per-entity overrides and the sticky ramp come with the published state, in ``overrides``::

    {"tenants":  {"acme": "CUTOVER_READS"},          # a tenant pinned to a phase
     "entities": {"customers:42": "SHADOW_READ"},     # one entity pinned (most specific wins)
     "ramp": {"phase": "CUTOVER_READS", "percent": 25, "by": "tenant"},   # 25 % of tenants, sticky
     "shadow_sample": 0.1}                            # runtime override of the shadow sampling ratio

A write fence (``"fence": {"all": true}`` or ``{"tenants": [...]}``) is published while authority moves
between the stores: writes of a fenced scope wait until it lifts (:meth:`PhaseCache.try_enter`). The epoch
this instance records is held back to the oldest epoch a unit of work still in flight was routed under, so
the barrier of a fence epoch passes only once no write routed before the fence can still land.

A ramp is sticky because a subject's bucket is a stable hash of (migration, salt, subject): raising the
percentage only ever adds subjects, and every instance puts a subject in the same bucket.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dualwrite import control
from dualwrite.errors import PhaseUnknownError as PhaseUnknownError  # re-exported by dualwrite.adapter
from dualwrite.store import Store

log = logging.getLogger("dualwrite.adapter")

PHASES = ("PREPARE", "DUAL_WRITE", "BACKFILL", "SHADOW_READ", "CUTOVER_READS", "CUTOVER_WRITES", "CLEANUP", "DONE")


class Side(StrEnum):
    OLD = "old"
    NEW = "new"

    @property
    def other(self) -> Side:
        return Side.NEW if self is Side.OLD else Side.OLD


@dataclass(frozen=True)
class PhaseRules:
    """the phase table (docs/architecture.md), one row."""

    phase: str
    authoritative: Side
    mirror_to: Side | None
    reads_from: Side
    shadow: bool
    """Reads are compared with the other store (sampled)."""
    shadow_optional: bool = False
    """Only when the application asks for it (CUTOVER_WRITES)."""


RULES: dict[str, PhaseRules] = {
    "PREPARE": PhaseRules("PREPARE", Side.OLD, None, Side.OLD, False),
    "DUAL_WRITE": PhaseRules("DUAL_WRITE", Side.OLD, Side.NEW, Side.OLD, False),
    "BACKFILL": PhaseRules("BACKFILL", Side.OLD, Side.NEW, Side.OLD, False),
    "SHADOW_READ": PhaseRules("SHADOW_READ", Side.OLD, Side.NEW, Side.OLD, True),
    "CUTOVER_READS": PhaseRules("CUTOVER_READS", Side.OLD, Side.NEW, Side.NEW, True),
    "CUTOVER_WRITES": PhaseRules("CUTOVER_WRITES", Side.NEW, Side.OLD, Side.NEW, False, shadow_optional=True),
    "CLEANUP": PhaseRules("CLEANUP", Side.NEW, None, Side.NEW, False),
    "DONE": PhaseRules("DONE", Side.NEW, None, Side.NEW, False),
}


def rules_for(phase: str) -> PhaseRules:
    try:
        return RULES[phase]
    except KeyError:
        raise ValueError(f"unknown phase {phase!r} (one of {', '.join(PHASES)})") from None


@dataclass(frozen=True)
class Routing:
    """The decision for one unit of work / session: the effective phase and what follows from it."""

    phase: str
    epoch: int
    rules: PhaseRules
    source: str = "global"
    """Why this phase: 'global', 'tenant', 'entity' or 'ramp'."""

    @property
    def authoritative(self) -> Side:
        return self.rules.authoritative

    @property
    def mirror_to(self) -> Side | None:
        return self.rules.mirror_to

    @property
    def reads_from(self) -> Side:
        return self.rules.reads_from


def ramp_bucket(migration: str, subject: str, salt: str = "") -> int:
    """A stable bucket in [0, 10000) for a subject: the same on every instance and every run."""
    digest = hashlib.blake2b(f"{migration}\0{salt}\0{subject}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000


def in_ramp(migration: str, subject: str, percent: float, salt: str = "") -> bool:
    return ramp_bucket(migration, subject, salt) < round(float(percent) * 100)


def resolve(migration: str, phase: str, overrides: Mapping[str, Any], *, tenant: str | None = None,
            entity: str | None = None) -> tuple[str, str]:
    """The effective phase of a subject: (phase, why). Most specific wins: entity, tenant, ramp, global."""
    if entity is not None:
        pinned = (overrides.get("entities") or {}).get(entity)
        if pinned in RULES:
            return str(pinned), "entity"
    if tenant is not None:
        pinned = (overrides.get("tenants") or {}).get(tenant)
        if pinned in RULES:
            return str(pinned), "tenant"
    ramp = overrides.get("ramp")
    if isinstance(ramp, Mapping) and ramp.get("phase") in RULES:
        by = str(ramp.get("by", "tenant"))
        subject = tenant if by == "tenant" else entity if by == "entity" else (tenant or entity)
        if subject is not None and in_ramp(migration, subject, float(ramp.get("percent", 0)),
                                           str(ramp.get("salt", ""))):
            return str(ramp["phase"]), "ramp"
    return phase, "global"


class PhaseCache:
    """The published state of one migration, cached for ``ttl`` seconds, plus this instance's heartbeat.

    ``state()`` never blocks on the control store while the cached state is younger than ``ttl`` (a
    background thread normally keeps it fresh). When the control store cannot be read the last state
    stays in force: an instance keeps its write order rather than guessing a new one, and the barrier
    (which counts instances by heartbeat) does not rely on an instance it cannot hear from.
    """

    def __init__(self, control_store: Store, migration: str, instance_id: str, *, ttl: float = 1.0,
                 heartbeat_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.control = control_store
        self.migration = migration
        self.instance_id = instance_id
        self.ttl = ttl
        self.heartbeat_seconds = heartbeat_seconds
        self._clock = clock
        self._state: control.ControlState | None = None
        self._loaded_at = -1e18
        self._loaded = False
        self._recorded_epoch: int | None = None
        self._recorded_at = -1e18
        self._lock = threading.Lock()
        self._last_error: str | None = None
        self._listeners: list[Callable[[control.ControlState], None]] = []
        self._inflight: dict[int, int] = {}
        """epoch -> units of work routed under it and not finished yet (the barrier waits for them)."""
        self._inflight_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._loaded

    def on_change(self, fn: Callable[[control.ControlState], None]) -> None:
        """Call ``fn(state)`` whenever a new epoch (or new overrides) is adopted."""
        self._listeners.append(fn)

    def _default(self) -> control.ControlState:
        return control.ControlState(migration=self.migration, phase="PREPARE", epoch=0, paused=False)

    def refresh(self, *, force: bool = False) -> control.ControlState:
        """Read the control state now (unless fresh); record the epoch seen and the heartbeat."""
        if not force and self._loaded and self._clock() - self._loaded_at < self.ttl:
            assert self._state is not None
            return self._state
        if not self._lock.acquire(blocking=not self._loaded):
            # another thread is refreshing: use the state we have
            assert self._state is not None
            return self._state
        try:
            try:
                state = control.read_state(self.control, self.migration) or self._default()
            except Exception as exc:  # noqa: BLE001 - keep the last state; report once per kind
                msg = f"{type(exc).__name__}"
                if msg != self._last_error:
                    log.warning("migration %s: cannot read the control state (%s); keeping %s", self.migration,
                                msg, self._state.phase if self._state else "nothing")
                    self._last_error = msg
                if not self._loaded:
                    raise PhaseUnknownError(f"migration {self.migration}: the phase cannot be read from the "
                                            f"control store {self.control.name!r}") from None
                assert self._state is not None
                return self._state
            self._last_error = None
            previous = self._state
            if previous is None or state.epoch >= previous.epoch:
                self._state = state  # never go back to an older epoch (a lagging replica of the state)
            self._loaded_at = self._clock()
            self._loaded = True
            current = self._state
            assert current is not None
            changed = previous is None or (current.epoch, current.overrides, current.phase) != (
                previous.epoch, previous.overrides, previous.phase)
            if changed:
                for fn in self._listeners:
                    try:
                        fn(current)
                    except Exception:  # a listener must not break the cache (logged with its traceback)
                        log.exception("phase listener failed")
            self._record(current.epoch)
            return current
        finally:
            self._lock.release()

    def _record(self, epoch: int) -> None:
        with self._inflight_lock:
            # never acknowledge an epoch while a unit of work routed under an older one may still write
            epoch = min([epoch, *self._inflight])
        now = self._clock()
        if self._recorded_epoch == epoch and now - self._recorded_at < self.heartbeat_seconds:
            return
        try:
            control.record_instance_seen(self.control, self.migration, self.instance_id, epoch)
        except Exception as exc:  # noqa: BLE001 - retried at the next refresh
            log.warning("migration %s: cannot record epoch %d for instance %s (%s)", self.migration, epoch,
                        self.instance_id, type(exc).__name__)
            return
        self._recorded_epoch, self._recorded_at = epoch, now

    def is_fresh(self) -> bool:
        """The cached state is younger than ``ttl`` (reading it costs nothing)."""
        return self._loaded and self._clock() - self._loaded_at < self.ttl

    def state(self) -> control.ControlState:
        """The state in force (refreshed inline only when stale and nobody else is refreshing)."""
        if self._loaded and self._clock() - self._loaded_at < self.ttl:
            assert self._state is not None
            return self._state
        return self.refresh()

    def route(self, tenant: str | None = None, entity: str | None = None) -> Routing:
        st = self.state()
        phase, why = resolve(self.migration, st.phase, st.overrides, tenant=tenant, entity=entity)
        return Routing(phase=phase, epoch=st.epoch, rules=rules_for(phase), source=why)

    def fenced(self, tenant: str | None = None) -> bool:
        """The cached state fences writes of ``tenant`` (or the whole migration)."""
        st = self._state
        return st is not None and control.is_fenced(st.overrides, tenant)

    def try_enter(self, subjects: list[tuple[str | None, str | None]]) -> list[Routing] | None:
        """Route a unit of work that writes (one routing per (tenant, entity) subject) and count it in flight,
        atomically with respect to the epoch this instance acknowledges; None while a subject is fenced.

        Uses the cached state as it is (call :meth:`state` first to refresh a stale one). Every call that
        returns routings must be matched by :meth:`leave` with their epoch."""
        if not self._loaded:
            self.refresh()
        with self._inflight_lock:
            st = self._state
            assert st is not None
            if any(control.is_fenced(st.overrides, t) for t, _ in subjects):
                return None
            out = []
            for tenant, entity in subjects:
                phase, why = resolve(self.migration, st.phase, st.overrides, tenant=tenant, entity=entity)
                out.append(Routing(phase=phase, epoch=st.epoch, rules=rules_for(phase), source=why))
            self._inflight[st.epoch] = self._inflight.get(st.epoch, 0) + 1
            return out

    def hold(self, epoch: int) -> None:
        """Count one more unit of work in flight under ``epoch`` (a routing decided earlier and passed in)."""
        with self._inflight_lock:
            self._inflight[epoch] = self._inflight.get(epoch, 0) + 1

    def leave(self, epoch: int) -> None:
        """A unit of work counted by :meth:`try_enter` is over (committed, mirrored or failed)."""
        with self._inflight_lock:
            n = self._inflight.get(epoch, 0) - 1
            if n > 0:
                self._inflight[epoch] = n
            else:
                self._inflight.pop(epoch, None)

    def in_flight(self) -> dict[int, int]:
        """Units of work in flight by the epoch they were routed under."""
        with self._inflight_lock:
            return dict(self._inflight)

    def forget(self) -> None:
        """Leave the barrier at once (a cleanly stopping instance)."""
        try:
            control.forget_instance(self.control, self.migration, self.instance_id)
        except Exception as exc:  # noqa: BLE001 - it will time out of the barrier instead
            log.warning("migration %s: cannot forget instance %s (%s)", self.migration, self.instance_id,
                        type(exc).__name__)
