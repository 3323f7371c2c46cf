"""The bypass capture activities' inputs: they name the whole migration, so they are spec carriers (by
reference once published, see :mod:`workflows.models._spec`). Here rather than in :mod:`workflows.bypass`,
which :mod:`workflows.models` imports (its summary models are part of the migration's status)."""

from __future__ import annotations

from pydantic import Field

from workflows.models._spec import SpecCarrier

__all__ = ["BypassCaptureInput", "BypassCollectInput", "BypassRefuseInput"]


class BypassCaptureInput(SpecCarrier):
    install: list[str] = Field(default_factory=list, description="store sides to capture on: old, new")
    remove: list[str] = Field(default_factory=list, description="store sides to stop capturing on")
    discard: bool = Field(default=False, description="also delete the migration's uncollected records")


class BypassCollectInput(SpecCarrier):
    """Both stores are collected; a record's key is repaired from the store it was captured on."""

    refusing_old: bool = Field(default=False, description="also read how many writes the old store refused")


class BypassRefuseInput(SpecCarrier):
    """After write cutover the old store refuses writes that bypass the adapter (``refuse``), or accepts them
    again (rollback, a refused flip, abort, CLEANUP)."""

    refuse: bool = Field(default=True, description="install (True) or lift (False) the refusal on the old store")
    final: bool = Field(default=False, description="lifting for good: the refusal counters go too")
