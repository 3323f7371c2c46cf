"""A small application for ``dualwrite audit`` (tests/dualwrite/test_audit.py): never run, only read.

It migrates ``orders`` and ``customers`` (spec.yaml) and writes them every way an application does: through
the adapter (``writer.insert``, a unit of work that touches its keys, an installed sessionmaker) and around
it (raw SQL, SQLAlchemy Core on a Table, an ORM session nobody installed dualwrite on). It also reads them,
and writes ``orders_archive``, which only looks like a migrated table. Every line the audit must report
ends with a ``# bypass: TABLE`` comment; tests/dualwrite/test_audit.py checks the findings are exactly those lines.
"""
