"""The migration spec: a YAML file validated by pydantic.

The spec names stores, never URLs: a spec is checked into repositories and travels through Temporal
history, so it must never carry a credential. Validation errors are reported all at once, each with the
file line it came from, because the YAML is what the operator edits.

The models are in :mod:`dualwrite.spec._models`, the lenient reader with line numbers in
:mod:`dualwrite.spec._reading`; import both from here.
"""

from __future__ import annotations

from dualwrite.spec._models import (
    TENANT_ID_RE,
    ColumnMap,
    Gates,
    MigrationSpec,
    Mode,
    ReverseMap,
    RollbackTriggers,
    Strategy,
    TableSpec,
    Tenancy,
)
from dualwrite.spec._reading import Loc, SpecDocument, load_spec, parse_spec, read_spec, read_spec_text

__all__ = [
    "TENANT_ID_RE",
    "ColumnMap",
    "Gates",
    "Loc",
    "MigrationSpec",
    "Mode",
    "ReverseMap",
    "RollbackTriggers",
    "SpecDocument",
    "Strategy",
    "TableSpec",
    "Tenancy",
    "load_spec",
    "parse_spec",
    "read_spec",
    "read_spec_text",
]
