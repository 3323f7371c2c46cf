"""The repair guard: a verification's repair, and a batch of the repair queue's drain, is applied only while the
store it copies from is still the authority and no write fence is up (the workflow's own drain under the
fence excepted), for every strategy.

A verification is a long activity: it starts under one phase, and by the time it repairs, the workflow may
have fenced writes (authority is about to move) or flipped authority. Copying then in the direction the
verification started with overwrites acknowledged writes of the new authority with the old rows. So before
each repair round the guard reads the published state in a control-store transaction that stays open until
the round's writes have committed, with a shared lock on the migration's state row (PostgreSQL ``FOR SHARE``,
MariaDB/MySQL ``LOCK IN SHARE MODE``; SQLite has one writer at a time anyway): a fence or flip published
before is seen and refuses the repair (:class:`~dualwrite.errors.RepairRefusedError`), and one published
meanwhile waits for the round to commit. The next verification repairs in the right direction.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Collection, Iterator
from typing import Any

from dualwrite import control
from dualwrite.errors import RepairRefusedError
from dualwrite.store import Dialect, Store

__all__ = ["RepairGuard", "authority_for"]


def authority_for(phase: str, overrides: Any, tenant: str | None) -> str:
    """'old' or 'new': the store authoritative for ``tenant`` (None: the migration) under a published state;
    a tenant that moved on its own (``overrides["tenants"]``) follows its own phase."""
    from dualwrite.adapter.phase import rules_for  # noqa: PLC0415 - the adapter package is heavy

    effective = phase
    tenants = overrides.get("tenants") if isinstance(overrides, dict) else None
    if tenant is not None and isinstance(tenants, dict) and isinstance(tenants.get(tenant), str):
        effective = tenants[tenant]
    return str(rules_for(effective).authoritative.value)


class RepairGuard:
    """Refuses a repair from ``authoritative`` (``old`` or ``new``) once that store is no longer authoritative for
    ``tenant`` (None: the migration's phase) or while a write fence is up for it."""

    def __init__(self, store: Store, migration: str, authoritative: str, tenant: str | None = None, *,
                 under_fence: bool = False, any_tenant_fence: bool = False,
                 other_tenants: Collection[str] | None = None) -> None:
        self.store = store
        self.migration = migration
        self.authoritative = authoritative
        self.tenant = tenant
        self.under_fence = under_fence
        """The workflow's own drain under the fence: it runs *because* the fence is up (authority still holds)."""
        self.any_tenant_fence = any_tenant_fence
        """A migration-wide verification: a tenant's fence refuses it too (it may hold that tenant's rows)."""
        self.other_tenants = None if other_tenants is None else frozenset(other_tenants)
        """A migration-wide repair of a table with a tenant column (``tenant`` None), planned leaving out these
        tenants: it holds every other tenant's rows, so a tenant that has moved on its own to the other
        authority since (not in this set) refuses it too. None: the rows follow the migration's phase only."""

    def _select(self) -> str:
        p = self.store.paramstyle
        sql = f"SELECT phase, overrides FROM {control.STATE} WHERE migration = {p}"
        if self.store.dialect is Dialect.POSTGRESQL:
            return sql + " FOR SHARE"
        if self.store.dialect is Dialect.MYSQL:
            return sql + " LOCK IN SHARE MODE"
        return sql

    def refusal(self, phase: str, overrides: Any) -> str:
        """Why a repair must not run under this published state ('' when it may)."""
        fence = overrides.get("fence") if isinstance(overrides, dict) else None
        fenced = control.is_fenced(overrides, self.tenant) or (
            self.any_tenant_fence and self.tenant is None and isinstance(fence, dict) and bool(fence.get("tenants")))
        if fenced and not self.under_fence:
            return "a write fence is up (authority is moving between the stores)"
        now = authority_for(phase, overrides, self.tenant)
        tenants = overrides.get("tenants") if isinstance(overrides, dict) else None
        if now == self.authoritative and self.tenant is None and self.other_tenants is not None and isinstance(
                tenants, dict):
            for other in sorted(t for t in tenants if t not in self.other_tenants):
                moved = authority_for(phase, overrides, other)
                if moved != self.authoritative:
                    return (f"authority moved to the {moved} store for tenant {other} since the repair started "
                            f"copying from the {self.authoritative} store")
        if now != self.authoritative:
            scope = f" for tenant {self.tenant}" if self.tenant is not None else ""
            return (f"authority moved to the {now} store{scope} since the repair started copying from the "
                    f"{self.authoritative} store")
        return ""

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Check the published state and keep it from changing until the block (the repair) has committed.

        Raises :class:`RepairRefusedError` (the block does not run) when the repair must not be applied."""
        with self.store.connect() as conn:
            cur = conn.cursor()
            try:
                cur.execute(self._select(), (self.migration,))
                row = cur.fetchone()
                if row is not None:
                    overrides = json.loads(row[1]) if isinstance(row[1], str) else (row[1] or {})
                    why = self.refusal(str(row[0]), overrides)
                    if why:
                        raise RepairRefusedError(f"migration {self.migration}: repair refused: {why}")
                yield
            finally:
                cur.close()
                conn.rollback()
