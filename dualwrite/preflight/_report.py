"""What a preflight found: the problems, the stores it reached and the tables that passed, as data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dualwrite.errors import Problem
from dualwrite.mapping import TableMapping

#: how long a preflight waits for a server before calling it unreachable
_ROLE_LABEL = {"old": "old", "new": "new", "control_store": "control"}



@dataclass(frozen=True)
class StoreSummary:
    """A store the spec names, as far as preflight got with it. ``url`` is redacted."""

    name: str
    roles: tuple[str, ...]
    url: str | None
    dialect: str | None
    reachable: bool
    user: str | None = None


@dataclass(frozen=True)
class TableSummary:
    """One table that passed every check: what the migration will do with it."""

    index: int
    source: str
    target: str
    source_key: tuple[str, ...]
    target_key: tuple[str, ...]
    columns: int
    version_column: str | None
    rows: int | None
    rows_kind: str  # "exact", "estimate", "more_than" (counted up to EXACT_COUNT_LIMIT) or "unknown"
    mapping: TableMapping = field(repr=False, compare=False)

    def rows_text(self) -> str:
        if self.rows is None:
            return "row count unknown"
        if self.rows_kind == "more_than":
            return f"more than {self.rows:,} rows"
        return f"{'~' if self.rows_kind == 'estimate' else ''}{self.rows:,} rows"


@dataclass
class PreflightReport:
    """Every problem found (each with where it is), and a summary of the tables and stores checked."""

    source: str
    problems: list[Problem] = field(default_factory=list)
    stores: list[StoreSummary] = field(default_factory=list)
    tables: list[TableSummary] = field(default_factory=list)
    authority: list[Problem] = field(default_factory=list)
    """Why the new store may not become authoritative (a Redis that keeps nothing on disk or evicts keys):
    ``dualwrite check`` reports these as problems and the CUTOVER_WRITES gate refuses on them, but they do not
    stop PREPARE, because every phase before write cutover is safe with such a store."""
    notes: list[str] = field(default_factory=list)
    """Facts worth knowing that are no problem (the memory a Redis new store will need)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def mappings(self) -> list[TableMapping]:
        return [t.mapping for t in self.tables]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view for ``dualwrite check --json`` (no mappings, no URLs but redacted ones)."""
        return {
            "spec": self.source,
            "ok": self.ok,
            "problems": [{"where": p.where, "message": p.message} for p in self.problems],
            "authority_problems": [{"where": p.where, "message": p.message} for p in self.authority],
            "store_notes": list(self.notes),
            "stores": [
                {"name": s.name, "roles": list(s.roles), "url": s.url, "dialect": s.dialect,
                 "reachable": s.reachable, "user": s.user} for s in self.stores
            ],
            "tables": [
                {"index": t.index, "source": t.source, "target": t.target, "source_key": list(t.source_key),
                 "target_key": list(t.target_key), "columns": t.columns, "version_column": t.version_column,
                 "rows": t.rows, "rows_kind": t.rows_kind} for t in self.tables
            ],
        }
