"""The name CLEANUP gives an old table it retires: ``<table>_dw_retired_<stamp>`` in the table's schema.

One function for the activity that renames the table and the workflow that shows the plan (a dry run of
CLEANUP), so the name an operator is promised is the name the table gets. Pure (standard library only): the
workflow sandbox imports it."""

from __future__ import annotations

import hashlib

__all__ = ["MAX_IDENT", "RETIRED_INFIX", "retired_name"]

RETIRED_INFIX = "_dw_retired_"
MAX_IDENT = 63
"""PostgreSQL's identifier limit (MariaDB allows 64): a longer name would be cut by the server, silently."""


def retired_name(table: str, stamp: str) -> str:
    """``<table>_dw_retired_<stamp>`` in the table's schema, its table part shortened (with a hash of the
    whole name, so two long names stay apart) to fit an identifier."""
    schema, dot, name = table.rpartition(".")
    suffix = f"{RETIRED_INFIX}{stamp}"
    if len(name) + len(suffix) > MAX_IDENT:
        digest = hashlib.sha256(name.encode()).hexdigest()[:6]
        name = f"{name[:MAX_IDENT - len(suffix) - 7]}_{digest}"
    return f"{schema}{dot}{name}{suffix}"
