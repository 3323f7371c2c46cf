"""Has the Redis new store lost its data since PREPARE? One marker key per migration says.

A Redis restarted without persistence, or emptied by ``FLUSHALL``, loses every key copied so far, silently;
a verification finds that (every row missing), but a gate that trusts a verification made before the wipe
would not. So PREPARE writes the marker ``__dualwrite__:<migration>:intact``, and every gate into
CUTOVER_READS and beyond reads it (one ``GET``):

- ``intact``: nothing was lost since the marker was written; the gate's other metrics decide;
- missing: the store was wiped. The gate fails (``new_store_intact``), and the marker is rewritten as
  ``suspect:<when>``: the cutover stays blocked until a verification that started after that moment found
  the stores equal (run ``dualwrite verify``: it re-copies what is missing, then verify again);
- ``suspect:<when>``: as above, until such a verification; then it is ``intact`` again.

Keys starting with ``__dualwrite__:`` are dualwrite's: verification's SCAN skips them. A migration's own
(``__dualwrite__:<migration>:*``, this marker and whatever else it keeps there) go with it: abort and CLEANUP
remove them (:func:`remove_markers`), so no later gate reads the marker (the gates read it from CUTOVER_READS
through CLEANUP: :data:`dualwrite.gates.INTACT_GATED`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from dualwrite.gates import GateMetric, Verdict

__all__ = ["INTACT_METRIC", "MARKER_PREFIX", "intact_metric", "mark_intact", "marker_key", "remove_markers"]

MARKER_PREFIX = "__dualwrite__:"
INTACT_METRIC = "new_store_intact"


def marker_key(migration: str) -> str:
    return f"{MARKER_PREFIX}{migration}:intact"


def mark_intact(store: Any, migration: str) -> None:
    """Write the marker (PREPARE): nothing copied yet, nothing lost."""
    client = store.client(timeout=10.0)
    try:
        client.set(marker_key(migration), "intact")
    finally:
        client.close()


def _glob_escaped(text: str) -> str:
    """``text`` with the characters SCAN's MATCH pattern treats specially escaped."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def remove_markers(store: Any, migration: str) -> int:
    """Delete every ``__dualwrite__:<migration>:*`` key (abort, CLEANUP); how many went. Idempotent."""
    client = store.client(timeout=10.0)
    try:
        names = list(client.scan_iter(match=f"{_glob_escaped(MARKER_PREFIX + migration)}:*", count=1000))
        return sum(int(client.delete(*names[i:i + 1000])) for i in range(0, len(names), 1000))
    finally:
        client.close()


def _when(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def intact_metric(store: Any, migration: str, verified_at: dt.datetime | None, verified_ok: bool,
                  now: dt.datetime) -> GateMetric:
    """Judge the marker (see the module docstring); ``verified_*``: the last verification, ``now``: the gate's."""
    key = marker_key(migration)
    client = store.client(timeout=10.0)
    try:
        raw = client.get(key)
        value = raw.decode() if isinstance(raw, bytes) else raw
        if value == "intact":
            return GateMetric(name=INTACT_METRIC, value=1, threshold=1, op="==", verdict=Verdict.PASS,
                              detail="no data lost since PREPARE")
        since = _when(value.removeprefix("suspect:")) if value else None
        if since is None:  # wiped now (or the marker is unreadable): suspect from now on
            since = now
            client.set(key, f"suspect:{since.isoformat()}")
        at = verified_at if verified_at is None or verified_at.tzinfo else verified_at.replace(tzinfo=dt.UTC)
        if verified_ok and at is not None and at > since:
            client.set(key, "intact")
            return GateMetric(name=INTACT_METRIC, value=1, threshold=1, op="==", verdict=Verdict.PASS,
                              detail=f"wiped at {since:%Y-%m-%d %H:%M:%S} UTC, verified equal since")
    finally:
        client.close()
    return GateMetric(name=INTACT_METRIC, value=0, threshold=1, op="==", verdict=Verdict.FAIL,
                      detail=f"the Redis new store lost this migration's keys (FLUSHALL, or a restart without "
                             f"persistence; noticed {since:%Y-%m-%d %H:%M:%S} UTC): run `dualwrite verify` to "
                             "re-copy them, then verify again; no cutover until a verification finds the stores "
                             "equal")
