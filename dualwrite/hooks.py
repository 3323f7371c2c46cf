"""Named hook points for fault-injection tests (the chaos harness), inert unless enabled.

A hook point is one call, ``hooks.point("mirror.before_commit", table=...)``, placed at a step boundary
(before/after a batch commit, before/after a phase flip, right after an authoritative commit). In
production it costs one dictionary lookup: unless the environment variable ``DUALWRITE_CHAOS_HOOKS``
names a control file, :func:`point` returns at once.

The control file is JSON, re-read at most every 0.2 s, mapping point names to actions::

    {"adapter.after_primary_commit": {"action": "kill", "probability": 0.05},
     "mirror.before_commit": {"action": "delay", "seconds": 0.5},
     "copy.after_batch_commit": {"action": "fail", "probability": 0.1},
     "phase.before_flip": {"action": "pause", "seconds": 2}}

Actions: ``kill`` (SIGKILL this process: the harshest crash, nothing flushed), ``fail`` (raise
:class:`ChaosError`), ``delay`` / ``pause`` (sleep ``seconds``, at most 30). ``probability`` (default 1)
and ``times`` (how many firings at most, per process) bound each action. Every firing appends one line
to ``<control file>.fired`` so the harness can count what it injected.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

ENV = "DUALWRITE_CHAOS_HOOKS"

POINTS = (
    "adapter.after_primary_commit",
    "mirror.before_commit",
    "mirror.after_commit",
    "copy.before_batch_commit",
    "copy.after_batch_commit",
    "copy.before_plan",
    "prepare.before_preflight",
    "relay.before_batch",
    "relay.after_batch",
    "relay.stream_after_read",
    "phase.before_flip",
    "phase.after_flip",
    "mirror.after_read",
    "verify.before_repair",
)
"""The named points (documentation; any name is accepted)."""


class ChaosError(RuntimeError):
    """Raised by a hook point whose action is ``fail``."""


_lock = threading.Lock()
_cache: dict[str, Any] = {"path": None, "read_at": 0.0, "rules": {}}
_fired: dict[str, int] = {}


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def _rules(path: str) -> dict[str, Any]:
    now = time.monotonic()
    with _lock:
        if _cache["path"] == path and now - float(_cache["read_at"]) < 0.2:
            return dict(_cache["rules"])
        try:
            rules = json.loads(Path(path).read_text() or "{}")
        except (OSError, ValueError):
            rules = {}
        _cache.update(path=path, read_at=now, rules=rules if isinstance(rules, dict) else {})
        return dict(_cache["rules"])


def _record(path: str, name: str, action: str) -> None:
    try:
        with open(path + ".fired", "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()} {name} {action}\n")
            fh.flush()
    except OSError:
        pass


def point(name: str, **_context: Any) -> None:
    """A named hook point: does nothing unless chaos hooks are enabled and a rule names this point."""
    path = os.environ.get(ENV)
    if not path:
        return
    rule = _rules(path).get(name)
    if not isinstance(rule, dict):
        return
    if random.random() >= float(rule.get("probability", 1.0)):  # noqa: S311 - fault injection, not crypto
        return
    times = rule.get("times")
    with _lock:
        if times is not None and _fired.get(name, 0) >= int(times):
            return
        _fired[name] = _fired.get(name, 0) + 1
    action = str(rule.get("action", ""))
    _record(path, name, action)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "fail":
        raise ChaosError(f"chaos hook {name}: injected failure")
    elif action in ("delay", "pause"):
        time.sleep(min(30.0, max(0.0, float(rule.get("seconds", 0.1)))))
