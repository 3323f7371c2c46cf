"""What the audit found, and how it is printed: ``path:line: table - why`` lines and a summary, or JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

RAW_SQL = "raw-sql"
CORE = "core"
ORM = "orm"


@dataclass(frozen=True)
class Finding:
    """One write to a migrated table that does not go through the dual-write adapter."""

    path: str
    line: int
    table: str
    """The migrated table as the spec names it (its ``source``)."""
    kind: str
    """:data:`RAW_SQL`, :data:`CORE` or :data:`ORM`."""
    why: str
    suppressed: bool = False
    """A ``# dualwrite: ignore`` comment on the line (or its statement) accepts it."""

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.table} - {self.why}"


@dataclass
class AuditReport:
    findings: list[Finding] = field(default_factory=list)
    """Every finding, suppressed ones included, in path and line order."""
    warnings: list[str] = field(default_factory=list)
    """Files that could not be read or parsed (skipped), as ``path:line: warning: ...`` lines."""
    files: int = 0
    """Python files read and analysed."""

    @property
    def active(self) -> list[Finding]:
        return [f for f in self.findings if not f.suppressed]

    @property
    def suppressed(self) -> list[Finding]:
        return [f for f in self.findings if f.suppressed]

    def summary(self) -> str:
        """``3 findings, 1 suppressed, 42 files`` (and the skipped files, when there are any)."""
        n = len(self.active)
        text = (f"{n} finding{'s' if n != 1 else ''}, {len(self.suppressed)} suppressed, "
                f"{self.files} file{'s' if self.files != 1 else ''}")
        if self.warnings:
            text += f", {len(self.warnings)} skipped"
        return text

    def lines(self) -> list[str]:
        return [str(f) for f in self.active]

    def to_json(self) -> str:
        """The unsuppressed findings as a JSON list of objects (path, line, table, kind, why)."""
        return json.dumps([{k: v for k, v in asdict(f).items() if k != "suppressed"} for f in self.active], indent=2)
