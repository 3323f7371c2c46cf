"""Identifiers every dualwrite workflow shares: the task queue, workflow ids, the phases and the search
attributes, and the base of every model that crosses Temporal."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict
from temporalio.common import SearchAttributeKey

TASK_QUEUE = "dualwrite"


WORKFLOW_ID_PREFIX = "dualwrite-"


def workflow_id(name: str) -> str:
    """The workflow id of a migration: one running MigrationWorkflow per migration name."""
    return f"{WORKFLOW_ID_PREFIX}{name}"


class Phase(StrEnum):
    """The phases, in order (docs/architecture.md, "The phase machine")."""

    PREPARE = "PREPARE"
    DUAL_WRITE = "DUAL_WRITE"
    BACKFILL = "BACKFILL"
    SHADOW_READ = "SHADOW_READ"
    CUTOVER_READS = "CUTOVER_READS"
    CUTOVER_WRITES = "CUTOVER_WRITES"
    CLEANUP = "CLEANUP"
    DONE = "DONE"

    @property
    def rank(self) -> int:
        """Position in the phase order (PREPARE is 0)."""
        return PHASE_ORDER.index(self)


PHASE_ORDER: tuple[Phase, ...] = tuple(Phase)


# Search attributes (register them on the server: `dualwrite dev` and the tests do).
MIGRATION_PHASE = SearchAttributeKey.for_keyword("MigrationPhase")


BACKFILL_PERCENT = SearchAttributeKey.for_int("BackfillPercent")
"""0 on entering BACKFILL, 100 when the backfill completed (not the steps between: see the no-progress-upsert
patch in workflows/migration/); the exact percentage is in the status query."""


SEARCH_ATTRIBUTES: tuple[SearchAttributeKey[Any], ...] = (MIGRATION_PHASE, BACKFILL_PERCENT)
"""The custom search attributes, as keys (``key.name``, ``key.indexed_value_type``)."""


SEARCH_ATTRIBUTE_CLI_ARGS: tuple[str, ...] = ("MigrationPhase=Keyword", "BackfillPercent=Int")
"""The same, spelled for ``temporal server start-dev --search-attribute``."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")
