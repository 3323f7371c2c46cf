"""The migrated tables as the adapter addresses them: one :class:`TableRuntime` per table, holding its two
:class:`SideTable` views (application column names on either store), its mappings both ways, its capture
method and its fast paths; and :class:`Touched`, a key a unit of work wrote."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from dualwrite.adapter._errors import RoutingError
from dualwrite.adapter._fast_path import FastPath
from dualwrite.adapter._options import AdapterOptions
from dualwrite.adapter.phase import Side
from dualwrite.capture import CaptureMethod, method_for
from dualwrite.errors import Problem, SchemaError
from dualwrite.mapping import ColumnPlan, SourceKind, TableMapping
from dualwrite.shadow import TableComparator
from dualwrite.spec import MigrationSpec, Strategy, TableSpec
from dualwrite.sqlgen import user_expr
from dualwrite.store import Dialect, Kind, Store
from dualwrite.stores import compile_for_stores, is_redis

__all__ = ["Key", "KeyLike", "SideTable", "TableRuntime", "Touched", "build_tables", "entity_of"]

Key = tuple[Any, ...]
KeyLike = Any  # a scalar, a tuple in key order, or a mapping of key column -> value


class SideTable:
    """One migrated table on one store, as the application addresses it (application column names)."""

    def __init__(self, side: Side, store: Store, table: str, columns: Sequence[str], app_to_col: Mapping[str, str],
                 key: Sequence[str], version: str | None, version_kind: Kind | None, writable: bool,
                 defaults: Mapping[str, Any] | None = None, computed: Sequence[ColumnPlan] = (),
                 app_reads: Sequence[ColumnPlan] = (), why_not_writable: str = "") -> None:
        self.side = side
        self.store = store
        sql = not is_redis(store)  # a Redis side runs no SQL: its reads and writes are _keyvalue's
        # (the SQL pieces below are then never used; SQLite's spelling stands in)
        self.dialect = store.dialect if sql else Dialect.SQLITE
        self.table = table
        self.qtable = store.quote(table) if sql else table
        self.columns = tuple(columns)
        self.app_to_col = dict(app_to_col)
        self.col_to_app = {v: k for k, v in self.app_to_col.items()}
        self.key = tuple(key)
        self.version = version
        self.version_kind = version_kind
        self.writable = writable
        self.defaults = dict(defaults or {})  # side column -> constant (new columns with a spec default)
        self.computed = tuple(computed)  # side columns computed from application values (forward expr/transform)
        self.app_reads = tuple(app_reads)  # application columns rebuilt from a side row (reverse rules)
        self.why_not_writable = why_not_writable
        self.ph = store.paramstyle if sql else "?"
        self.sql: dict[Any, str] = {}
        q = store.quote if sql else _bare
        self.returning_all = ", ".join(q(c) for c in self.columns)
        self.where_key = " AND ".join(f"{q(k)} = {self.ph}" for k in self.key)

    def col(self, app_name: str) -> str:
        try:
            return self.app_to_col[app_name]
        except KeyError:
            raise RoutingError(f"column {app_name!r} of table {self.table} cannot be written on the "
                               f"{self.side.value} store (not a plain column there)") from None

    def assignments(self, values: Mapping[str, Any]) -> list[tuple[str, str, list[Any]]]:
        """(side column, SQL of its value, parameters) for a write given in application column names.

        Renamed columns take a placeholder; a computed column is computed from the values it is made of
        (all of them must be given, or the stored value would mix old and new inputs). An ``expr`` runs
        in the statement itself over a one-row derived table of those values, so it costs no round trip.
        """
        out: list[tuple[str, str, list[Any]]] = []
        fed: set[str] = set()
        for plan in self.computed:
            if not any(i in values for i in plan.inputs):
                continue
            missing = [i for i in plan.inputs if i not in values]
            if missing:
                raise RoutingError(f"table {self.table}: column {plan.target!r} is computed from "
                                   f"{', '.join(plan.inputs)}; give {', '.join(missing)} too")
            fed.update(plan.inputs)
            out.append(self._computed(plan, values))
        plain = [(self.col(c), self.ph, [v]) for c, v in values.items() if c in self.app_to_col or c not in fed]
        return plain + out

    def _computed(self, plan: ColumnPlan, values: Mapping[str, Any]) -> tuple[str, str, list[Any]]:
        if plan.kind is SourceKind.TRANSFORM:
            assert plan.transform is not None
            arg = values[plan.source] if plan.source is not None else dict(values)
            return plan.target, self.ph, [plan.transform(arg)]
        assert plan.expr is not None
        q = self.store.quote
        cols = ", ".join(f"{self.ph} AS {q(i)}" for i in plan.inputs)
        return (plan.target, f"(SELECT {user_expr(plan.expr, self.store)} FROM (SELECT {cols}) AS dw_app)",
                [values[i] for i in plan.inputs])

    def read_sql(self) -> str:
        """SELECT of one row by key: the side's columns, then the SQL-rebuilt application columns."""
        exprs = [user_expr(p.expr, self.store) for p in self.app_reads if p.kind is SourceKind.EXPR and p.expr]
        return f"SELECT {', '.join([self.returning_all, *exprs])} FROM {self.qtable} WHERE {self.where_key}"

    def split_row(self, r: Sequence[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A row read with :meth:`read_sql` -> (the side's row in its own names, the application's row).

        The application's row carries the renamed columns under their application names and the columns
        the reverse rules rebuild (the old ``name`` joined from ``first_name`` and ``last_name``)."""
        n = len(self.columns)
        row = dict(zip(self.columns, r[:n], strict=True))
        app = {self.col_to_app.get(c, c): v for c, v in row.items()}
        extra = iter(r[n:])
        for p in self.app_reads:
            if p.kind is SourceKind.EXPR:
                app[p.target] = next(extra)
            elif p.kind is SourceKind.COLUMN:
                app[p.target] = row[p.source or ""]
            elif p.transform is not None:
                app[p.target] = p.transform(row[p.source] if p.source is not None else dict(row))
        return row, app

    def version_bump(self, qualifier: str = "") -> str:
        """The new version of an updated row: +1, or the database clock for a timestamp version."""
        if self.version_kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
            return _now_sql(self.dialect)
        return f"{qualifier}{self.store.quote(self.version or '')} + 1"

    def version_initial(self) -> tuple[str, tuple[Any, ...]]:
        if self.version_kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
            return _now_sql(self.dialect), ()
        return self.ph, (1,)


def _bare(name: str) -> str:
    return name


def _now_sql(dialect: Dialect) -> str:
    if dialect is Dialect.POSTGRESQL:
        return "clock_timestamp()"
    if dialect is Dialect.MYSQL:
        return "UTC_TIMESTAMP(6)"
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


class TableRuntime:
    """Everything the adapter knows about one migrated table."""

    def __init__(self, spec: TableSpec, forward: TableMapping, old: Store, new: Store,
                 strategy: Strategy = Strategy.SYNC) -> None:
        self.name = spec.source
        self.spec = spec
        self.strategy = strategy
        self.method: CaptureMethod = method_for(strategy)
        """How this table's writes reach the other store (its own strategy, or the migration's)."""
        self.forward = forward
        try:
            self.backward: TableMapping | None = forward.reversed()
        except ValueError:
            self.backward = None
        self.key = forward.source_key
        self.version = forward.version[0] if forward.version else None
        self.tenant_column = spec.tenant_column
        src, dst = forward.source_info, forward.target_info
        self.old = SideTable(Side.OLD, old, forward.source_table, list(src.columns), {c: c for c in src.columns},
                             forward.source_key, self.version,
                             src.columns[self.version].kind if self.version else None, writable=True)
        plain = {p.source: p.target for p in forward.columns if p.kind is SourceKind.COLUMN and p.source}
        defaults = {p.target: p.value for p in forward.columns if p.kind is SourceKind.DEFAULT}
        computed = [p for p in forward.columns if p.kind in (SourceKind.EXPR, SourceKind.TRANSFORM)]
        vnew = forward.version[1] if forward.version else None
        self.new = SideTable(Side.NEW, new, forward.target_table, list(dst.columns), plain, forward.target_key, vnew,
                             dst.columns[vnew].kind if vnew else None, writable=self.backward is not None,
                             defaults=defaults, computed=computed, app_reads=forward.reverse,
                             why_not_writable=_irreversible_text(forward))
        self.sides = {Side.OLD: self.old, Side.NEW: self.new}
        self.orm_compatible = (forward.source_table == forward.target_table and self.backward is not None
                               and all(p.source == p.target for p in forward.columns))
        # the image path computes columns in Python: a mapping with SQL (expr) re-reads the source instead
        self.fast: dict[Side, FastPath | None] = {Side.OLD: None, Side.NEW: None}
        # the fast path trusts the version guard only where a refused image can be told from a written one
        # (the upsert's row count); MariaDB/MySQL report a matched row as written, so an image refused there
        # would be lost silently: their side always re-reads the authoritative row (mirror_keys)
        if (forward.version is not None and not _has_expr(forward) and not is_redis(new)
                and new.dialect is not Dialect.MYSQL):
            self.fast[Side.OLD] = FastPath(forward, new, self.old.columns)
        if (forward.version is not None and self.backward is not None and not _has_expr(self.backward)
                and old.dialect is not Dialect.MYSQL):
            self.fast[Side.NEW] = FastPath(self.backward, old, self.new.columns)
        self.read_sql: dict[Side, str] = {}
        self.comparator = TableComparator(forward)

    def mapping_from(self, side: Side) -> TableMapping:
        if side is Side.OLD:
            return self.forward
        if self.backward is None:
            raise RoutingError(f"table {self.name}: {self.new.why_not_writable}, so the new store cannot be "
                               "mirrored back to the old one (write cutover is not possible for it)")
        return self.backward

    def key_of(self, key: KeyLike) -> Key:
        """A key given as scalar, tuple or mapping -> tuple in key order (application names)."""
        if isinstance(key, Mapping):
            try:
                return tuple(key[k] for k in self.key)
            except KeyError as exc:
                raise RoutingError(f"table {self.name}: key column {exc.args[0]!r} missing") from None
        if isinstance(key, tuple | list):
            if len(key) != len(self.key):
                raise RoutingError(f"table {self.name}: key has {len(key)} parts, expected {len(self.key)}")
            return tuple(key)
        if len(self.key) != 1:
            raise RoutingError(f"table {self.name}: composite key {self.key}: give a tuple or a mapping")
        return (key,)

    def key_from_values(self, values: Mapping[str, Any]) -> Key | None:
        if all(k in values for k in self.key):
            return tuple(values[k] for k in self.key)
        return None

    def tenant_of(self, values: Mapping[str, Any], given: str | None) -> str | None:
        """The tenant a write works for: the one given, else the row's tenant column."""
        if given is not None:
            return given
        if self.tenant_column and values.get(self.tenant_column) is not None:
            return str(values[self.tenant_column])
        return None

    def entity_from(self, values: Mapping[str, Any]) -> str | None:
        """The entity a row's values name, when they carry its whole key."""
        k = self.key_from_values(values)
        return None if k is None else entity_of(self, k)

    def read_statement(self, side: Side) -> str:
        """The SELECT of one row by key on ``side`` (cached; :meth:`SideTable.read_sql`)."""
        sql = self.read_sql.get(side)
        if sql is None:
            sql = self.read_sql[side] = self.sides[side].read_sql()
        return sql

    def select(self, conn: Connection, side: Side, key: Key) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(the store's row, the application's row) of one key on ``conn`` (a connection to ``side``), or None."""
        r = conn.exec_driver_sql(self.read_statement(side), tuple(key)).first()
        return None if r is None else self.sides[side].split_row(tuple(r))


def _has_expr(mapping: TableMapping) -> bool:
    return any(p.kind is SourceKind.EXPR for p in mapping.columns)


def _irreversible_text(mapping: TableMapping) -> str:
    """Why a mapping cannot be mirrored back, for the error a write after cutover gets."""
    missing = mapping.needs_reverse()
    if not missing:
        return ""
    olds = sorted({c for cols in missing.values() for c in cols})
    return (f"its mapping computes {', '.join(missing)} from {', '.join(olds)} and has no reverse rule for "
            f"{'it' if len(olds) == 1 else 'them'} (add 'reverse:' to the table's spec)")


@dataclass
class Touched:
    """A key written in a unit of work, with the committed row image when the statement returned it."""

    table: TableRuntime
    key: Key
    image: dict[str, Any] | None = None
    deleted: bool = False
    row_locked: bool = False
    """An UPDATE changed this key's row: a row every other transaction sees, now locked by this one until it
    commits, so that lock orders every other writer of the key (strict needs no lock of its own for it)."""



def entity_of(rt: TableRuntime, key: Key) -> str:
    """The entity a key names, as per-entity overrides spell it (``table:k1/k2``)."""
    return f"{rt.name}:" + "/".join(str(v) for v in key)


def build_tables(spec: MigrationSpec, old: Store, new: Store, options: AdapterOptions) -> dict[str, TableRuntime]:
    """Compile every table of the spec against both stores; raises :class:`SchemaError` with every problem."""
    tables: dict[str, TableRuntime] = {}
    problems: list[Problem] = []
    for t in spec.tables:
        mapping, found = compile_for_stores(t, old, new)  # a Redis new store: by its redis: section
        if mapping is None:
            problems += found
            continue
        tables[t.source] = TableRuntime(t, mapping, old, new, spec.strategy_of(t.source))
    if problems:
        raise SchemaError(problems, "the adapter cannot map the migration's tables")
    for name, rt in tables.items():
        ignore, norms = options.ignore_fields.get(name), options.normalizers.get(name)
        if ignore is not None or norms is not None:
            rt.comparator = TableComparator(rt.forward, ignore=frozenset(ignore or ()), normalizers=norms)
    return tables
