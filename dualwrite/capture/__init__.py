"""Capture methods: the one place a write strategy's name is looked up (docs/architecture.md).

``method_for(spec.strategy)`` (or a table's own strategy) gives the :class:`CaptureMethod` whose facts the
workflow, the relay, the gates and the adapter act on."""

from __future__ import annotations

from dualwrite.capture import async_, cdc, outbox, strict, sync, triggers
from dualwrite.capture._method import CaptureMethod, Evidence

__all__ = ["METHODS", "CaptureMethod", "Evidence", "method_for"]

METHODS: dict[str, CaptureMethod] = {m.METHOD.name: m.METHOD for m in (strict, sync, async_, outbox, triggers, cdc)}


def method_for(strategy: str) -> CaptureMethod:
    """The capture method of a strategy (a ``Strategy`` member or its name)."""
    try:
        return METHODS[str(strategy)]
    except KeyError:
        raise ValueError(f"unknown write strategy {strategy!r}: one of {', '.join(METHODS)}") from None
