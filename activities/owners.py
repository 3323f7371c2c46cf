"""PREPARE's side of the single-owner rule (see :mod:`dualwrite.owners`): the preflight activity asks
Temporal which migrations are running and refuses a table another one owns.

The preflight activity is a plain (threaded) activity, and Temporal gives a client only to ``async``
ones, so the worker hands its client and event loop over here (:func:`worker.build_worker`) and the
lookup runs on that loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dualwrite.config import StoreResolver
from dualwrite.errors import Problem
from dualwrite.owners import conflicts, owners_before
from dualwrite.spec import MigrationSpec

LOOKUP_TIMEOUT_SECONDS = 60.0


class OwnerCheck:
    """Looks up running migrations through the worker's own client."""

    def __init__(self) -> None:
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, client: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        self._client, self._loop = client, loop

    def problems(self, spec: MigrationSpec, resolver: StoreResolver) -> list[Problem]:
        """The tables of ``spec`` owned by a migration that got them first (empty without a client).

        A failed lookup raises: PREPARE retries it rather than start a migration it could not check."""
        if self._client is None or self._loop is None:
            return []
        from starter.client import live_migrations  # noqa: PLC0415 - the client side, only here

        live = asyncio.run_coroutine_threadsafe(live_migrations(self._client), self._loop).result(
            LOOKUP_TIMEOUT_SECONDS)
        me = next((m for m in live if m.name == spec.name), None)
        return conflicts(spec, owners_before(spec.name, me.started if me else None, live), resolver)
