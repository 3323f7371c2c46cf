"""Compile a table spec against the two live schemas into the plan the data path executes.

A :class:`TableMapping` says, for every target column, where its value comes from on the source (a
column, a SQL expression, a constant, or a Python transform), which columns form the key on each side,
and which column carries the row version. Compiling collects every problem instead of stopping at the
first one, so ``dualwrite check`` can print them all.

The spec's ``reverse`` rules are compiled here too: after write cutover rows are mirrored new -> old, and
an old column the forward mapping computed (a split, a cast, a transform) can only be rebuilt the way the
spec says. :meth:`TableMapping.reversed` is that plan; :meth:`TableMapping.needs_reverse` names what is
still missing, so preflight can refuse a migration that could never take the writes.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from dualwrite.errors import Problem
from dualwrite.spec import ReverseMap, TableSpec
from dualwrite.store import ColumnInfo, Kind, TableInfo

# For each *target* kind, the source kinds that may feed it without losing meaning. Text may feed UUID,
# JSON, dates and times because engines without those types store them as text (MySQL has no UUID, SQLite
# keeps dates as ISO text); text never silently becomes a number or a boolean: that is a change of meaning
# the spec must spell out (an ``expr`` cast or a transform).
_COMPATIBLE: dict[Kind, set[Kind]] = {
    Kind.INT: {Kind.INT, Kind.BOOL},
    Kind.BOOL: {Kind.BOOL, Kind.INT},
    Kind.DECIMAL: {Kind.DECIMAL, Kind.INT, Kind.BOOL},
    Kind.FLOAT: {Kind.FLOAT, Kind.INT, Kind.DECIMAL},
    Kind.TEXT: {Kind.TEXT, Kind.UUID, Kind.JSON, Kind.INT, Kind.DECIMAL, Kind.DATE, Kind.TIMESTAMP,
                Kind.TIMESTAMPTZ, Kind.TIME, Kind.BOOL, Kind.FLOAT},
    Kind.BYTES: {Kind.BYTES},
    Kind.DATE: {Kind.DATE, Kind.TEXT},
    Kind.TIME: {Kind.TIME, Kind.TEXT},
    Kind.TIMESTAMP: {Kind.TIMESTAMP, Kind.TIMESTAMPTZ, Kind.TEXT},
    Kind.TIMESTAMPTZ: {Kind.TIMESTAMPTZ, Kind.TIMESTAMP, Kind.TEXT},
    Kind.JSON: {Kind.JSON, Kind.TEXT},
    Kind.UUID: {Kind.UUID, Kind.TEXT},
}


class SourceKind(StrEnum):
    COLUMN = "column"
    EXPR = "expr"
    DEFAULT = "default"
    TRANSFORM = "transform"


@dataclass(frozen=True)
class ColumnPlan:
    """How one target column is filled."""

    target: str
    kind: SourceKind
    source: str | None = None  # source column (COLUMN, or the input of a TRANSFORM)
    expr: str | None = None
    value: Any = None
    transform: Callable[[Any], Any] | None = None
    inputs: tuple[str, ...] = ()
    """The columns on the reading side this column is made from (for a whole-row transform: every
    column it may read). Writes that touch none of them leave it alone; the reverse check uses them."""


#: identifiers as SQL spells them: "quoted", `quoted`, or bare (string literals are removed first)
_IDENT_TOKEN_RE = re.compile(r'"((?:[^"]|"")+)"|`((?:[^`]|``)+)`|([A-Za-z_][A-Za-z0-9_$]*)')
_SINGLE_QUOTED_RE = re.compile(r"'(?:[^']|'')*'")


def expr_columns(expr: str, columns: Iterable[str]) -> tuple[str, ...]:
    """The columns among ``columns`` that an SQL expression names, in order of first use.

    A lexical look, not a parser: it is what the write adapter needs to know which application values
    feed a computed column, and what preflight needs to know which old columns a computed column
    consumes. A function or keyword spelled like a column counts as a use, which can only ask for more.
    """
    known = set(columns)
    found: dict[str, None] = {}
    for m in _IDENT_TOKEN_RE.finditer(_SINGLE_QUOTED_RE.sub("''", expr)):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in known:
            found[name] = None
    return tuple(found)


@dataclass(frozen=True)
class TableMapping:
    """The executable plan for one table: immutable, cheap to share between threads."""

    source_table: str
    target_table: str
    source_key: tuple[str, ...]
    target_key: tuple[str, ...]
    columns: tuple[ColumnPlan, ...]
    source_info: TableInfo
    target_info: TableInfo
    version: tuple[str, str] | None = None  # (source column, target column)
    batch_size: int = 50_000
    tenant_column: str | None = None
    key_kinds: tuple[Kind, ...] = field(default=())
    reverse: tuple[ColumnPlan, ...] = ()
    """The spec's reverse rules: how source columns are rebuilt from the target (target = source column)."""

    @property
    def target_columns(self) -> tuple[str, ...]:
        return tuple(c.target for c in self.columns)

    @property
    def key_positions(self) -> tuple[int, ...]:
        """Positions of the key columns inside a target row tuple."""
        names = self.target_columns
        return tuple(names.index(k) for k in self.target_key)

    @property
    def version_position(self) -> int | None:
        return None if self.version is None else self.target_columns.index(self.version[1])

    @property
    def needs_python(self) -> bool:
        return any(c.kind is SourceKind.TRANSFORM for c in self.columns)

    @property
    def is_identity(self) -> bool:
        """True when every target column is a same-named source column: rows can travel untouched."""
        return all(c.kind is SourceKind.COLUMN and c.source == c.target for c in self.columns)

    def target_kinds(self) -> tuple[Kind, ...]:
        return tuple(self.target_info.columns[c].kind for c in self.target_columns)

    def needs_reverse(self) -> dict[str, tuple[str, ...]]:
        """Computed target column -> the source columns it consumes that nothing rebuilds on the way back.

        A source column mirrored back as a plain column, or named by a reverse rule, is rebuilt; one that
        only feeds an ``expr`` or a ``transform`` is not, and the table cannot take the writes (after
        write cutover the old store would silently stop following it)."""
        rebuilt = {c.source for c in self.columns if c.kind is SourceKind.COLUMN}
        rebuilt |= {r.target for r in self.reverse}
        out: dict[str, tuple[str, ...]] = {}
        for c in self.columns:
            if c.kind in (SourceKind.EXPR, SourceKind.TRANSFORM):
                missing = tuple(i for i in c.inputs if i not in rebuilt)
                if missing:
                    out[c.target] = missing
        return out

    def reversed(self) -> TableMapping:
        """The plan for mirroring new -> old (after write cutover, and for reverse verification).

        Plain columns reverse by themselves; a new column filled with a constant (``default``) has no
        counterpart in the old store and is left out; a computed column is left out too, and the old
        columns it was made from are rebuilt by the spec's ``reverse`` rules. Without a rule for each of
        them the table is irreversible: ValueError names what is missing.
        """
        missing = self.needs_reverse()
        if missing:
            raise ValueError("; ".join(
                f"column {t!r} is computed from {', '.join(repr(m) for m in cols)}, which cannot be mirrored "
                f"back without a reverse rule" for t, cols in missing.items()))
        ruled = {r.target for r in self.reverse}
        cols = [ColumnPlan(target=c.source, kind=SourceKind.COLUMN, source=c.target, inputs=(c.target,))
                for c in self.columns
                if c.kind is SourceKind.COLUMN and c.source is not None and c.source not in ruled]
        cols += self.reverse
        order = {name: i for i, name in enumerate(self.source_info.columns)}
        cols.sort(key=lambda p: order[p.target])
        return TableMapping(
            source_table=self.target_table, target_table=self.source_table, source_key=self.target_key,
            target_key=self.source_key, columns=tuple(cols), source_info=self.target_info,
            target_info=self.source_info,
            version=None if self.version is None else (self.version[1], self.version[0]),
            batch_size=self.batch_size, tenant_column=self.tenant_column,
            # the reversed plan reads the new table: its key values have the new columns' kinds
            key_kinds=tuple(self.target_info.columns[k].kind for k in self.target_key),
        )


TRANSFORMS_PATH_ENV = "DUALWRITE_TRANSFORMS_PATH"
"""Folders (``os.pathsep``-separated) that transforms are imported from, after the usual ``sys.path``."""


def transform_search_path() -> list[str]:
    """Where a transform's module is looked for once ``sys.path`` has not got it, in this order:
    ``$DUALWRITE_TRANSFORMS_PATH``, then the current directory.

    The installed ``dualwrite`` command puts its own bin folder first on ``sys.path``, not the folder it
    was started in, so without this a worker started from a project's root could not import that
    project's transforms (the README's ``examples.transforms:to_cents`` from a clone's root)."""
    extra = [p for p in os.environ.get(TRANSFORMS_PATH_ENV, "").split(os.pathsep) if p]
    return [*extra, os.getcwd()]


def _import_transform_module(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.partition(".")[0]
        if exc.name not in (top, module):
            raise  # the module was found; something it imports is missing
    # appended, never prepended: a folder named here must not shadow an installed package
    added = [p for p in transform_search_path() if p not in sys.path]
    sys.path.extend(added)
    importlib.invalidate_caches()
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"{exc} (transforms are imported from sys.path, ${TRANSFORMS_PATH_ENV} "
                                  "and the current directory)", name=exc.name) from None


def load_callable(dotted: str) -> Callable[[Any], Any]:
    """Import ``pkg.module:function`` (or ``pkg.module.function``), from ``sys.path`` and then the folders of
    :func:`transform_search_path`."""
    module, sep, attr = dotted.partition(":")
    if not sep:
        module, _, attr = dotted.rpartition(".")
    obj = getattr(_import_transform_module(module), attr)
    if not callable(obj):
        raise TypeError(f"{dotted} is not callable")
    return obj  # type: ignore[no-any-return]


def _type_problem(src: ColumnInfo, dst: ColumnInfo) -> str | None:
    if src.kind is Kind.OTHER or dst.kind is Kind.OTHER:
        return None
    if src.kind not in _COMPATIBLE.get(dst.kind, {dst.kind}):
        return (f"type mismatch: source {src.name} is {src.sql_type} ({src.kind}) but target {dst.name} is "
                f"{dst.sql_type} ({dst.kind}); convert it deliberately with 'expr' (a CAST) or a 'transform'")
    if src.kind is Kind.TEXT and dst.kind is Kind.TEXT and src.max_length is None and dst.max_length:
        return f"unbounded text {src.name} ({src.sql_type}) into {dst.name} {dst.sql_type} may truncate"
    if src.kind is dst.kind is Kind.TEXT and src.max_length and dst.max_length and dst.max_length < src.max_length:
        return f"narrowing: {src.name} {src.sql_type} into {dst.name} {dst.sql_type} may truncate"
    if src.kind is dst.kind is Kind.DECIMAL and src.precision and dst.precision:
        s_int = src.precision - (src.scale or 0)
        d_int = dst.precision - (dst.scale or 0)
        if d_int < s_int or (dst.scale or 0) < (src.scale or 0):
            return f"narrowing: {src.name} {src.sql_type} into {dst.name} {dst.sql_type} may lose digits"
    return None


def _did_you_mean(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _default_problem(value: Any, dst: ColumnInfo) -> str | None:
    """A constant that the target column cannot hold would fail every batch of the backfill."""
    if value is None:
        return None if dst.nullable else f"default is null but target column {dst.name} is NOT NULL"
    if isinstance(value, dict | list):
        return None if dst.kind in (Kind.JSON, Kind.TEXT, Kind.OTHER) else (
            f"default is a {type(value).__name__} but target column {dst.name} is {dst.sql_type}")
    if dst.kind in (Kind.INT, Kind.DECIMAL, Kind.FLOAT) and not isinstance(value, bool):
        try:
            float(value) if dst.kind is Kind.FLOAT else Decimal(str(value))
        except (ArithmeticError, ValueError, TypeError):
            return f"default {value!r} is not a number but target column {dst.name} is {dst.sql_type}"
        if dst.kind is Kind.INT and Decimal(str(value)) != Decimal(str(value)).to_integral_value():
            return f"default {value!r} is not a whole number but target column {dst.name} is {dst.sql_type}"
    return None


def _reverse_plan(spec: TableSpec, col: str, rule: ReverseMap, source: TableInfo, target: TableInfo,
                  plans: Sequence[ColumnPlan], version: tuple[str, str] | None,
                  bad: Callable[[str, str], None]) -> ColumnPlan | None:
    """Compile one reverse rule (old column ``col`` rebuilt from the new table), reporting its problems.

    Keys and the version column must travel back as plain columns: the reverse mirror finds rows by the
    key and guards them by the version. A rule for a column that already comes back as a rename would
    compete with it, so that is refused too.
    """
    sub = f".reverse.{col}"
    if col not in source.columns:
        bad(sub, f"column {col!r} does not exist in source table {spec.source}"
                 f"{_did_you_mean(col, list(source.columns))}")
        return None
    plain = [p.target for p in plans if p.kind is SourceKind.COLUMN and p.source == col]
    if plain:
        why = "a key column" if col in (spec.key or source.primary_key) else "mirrored back"
        bad(sub, f"column {col!r} is {why}: it comes back from target column {plain[0]!r} as a plain column, "
                 "so it takes no reverse rule")
        return None
    if version is not None and col == version[0]:
        bad(sub, f"column {col!r} is the version column: it must be copied as a plain column")
        return None
    if rule.from_ is not None and rule.from_ not in target.columns:
        bad(sub, f"column {rule.from_!r} does not exist in target table {spec.target_table}"
                 f"{_did_you_mean(rule.from_, list(target.columns))}")
        return None
    if rule.transform:
        try:
            fn = load_callable(rule.transform)
        except Exception as exc:  # noqa: BLE001 - report any import failure as a problem
            bad(sub, f"cannot import transform {rule.transform!r}: {exc}")
            return None
        return ColumnPlan(col, SourceKind.TRANSFORM, source=rule.from_, transform=fn,
                          inputs=(rule.from_,) if rule.from_ else tuple(target.columns))
    if rule.from_ is not None:
        msg = _type_problem(target.columns[rule.from_], source.columns[col])
        if msg:
            bad(sub, msg)
        return ColumnPlan(col, SourceKind.COLUMN, source=rule.from_, inputs=(rule.from_,))
    assert rule.expr is not None
    return ColumnPlan(col, SourceKind.EXPR, expr=rule.expr, inputs=expr_columns(rule.expr, target.columns))


class _TableCompiler:
    """Compiles one table spec against both schemas, collecting every problem on the way (one method per
    part of the plan: keys, column plans, the target key, the version column)."""

    def __init__(self, spec: TableSpec, source: TableInfo, target: TableInfo, where: str) -> None:
        self.spec, self.source, self.target = spec, source, target
        self.at = where or f"table {spec.source}"
        self.problems: list[Problem] = []
        self.plans: list[ColumnPlan] = []
        self.used_sources: set[str] = set()
        self.guessing = False  # a mapping names a missing column: which source column it meant is unknown

    def bad(self, sub: str, msg: str) -> None:
        self.problems.append(Problem(f"{self.at}{sub}", msg))

    def _no_source_column(self, sub: str, name: str) -> None:
        self.bad(sub, f"column {name!r} does not exist in source table {self.spec.source}"
                      f"{_did_you_mean(name, list(self.source.columns))}")

    # -- the source key (rule 5, docs/architecture.md): rows must be told apart on the source, or no write can
    # be mirrored

    def _not_null(self, cols: Sequence[str]) -> bool:
        return all(c in self.source.columns and not self.source.columns[c].nullable for c in cols)

    def source_key(self) -> list[str]:
        spec, source = self.spec, self.source
        uniques = [list(source.primary_key)] if source.primary_key else []
        uniques += sorted((list(u) for u in source.unique_keys if u), key=lambda u: not self._not_null(u))
        key = list(spec.key) if spec.key else list(next(iter(uniques), []))
        if not uniques:
            self.bad(".key", f"source table {spec.source} has no primary or unique key: its rows cannot be told "
                             "apart, so writes cannot be mirrored, copied or verified; add a primary key to it first")
        missing = [k for k in key if k not in source.columns]
        for k in missing:
            self.bad(".key", f"key column {k!r} does not exist in source table {spec.source}"
                             f"{_did_you_mean(k, list(source.columns))}")
        if uniques and key and not missing:
            self._check_key_unique(key, uniques)
        return key

    def _check_key_unique(self, key: list[str], uniques: list[list[str]]) -> None:
        spec, source = self.spec, self.source
        covered = [u for u in uniques if set(u) <= set(key)]
        if not covered:
            known = "; ".join(", ".join(u) for u in uniques)
            self.bad(".key", f"key ({', '.join(key)}) is not unique in source table {spec.source}: name its "
                             f"primary key or a unique key ({known})")
        elif not any(u == list(source.primary_key) or self._not_null(u) for u in covered):
            # a unique key on nullable columns admits any number of rows whose key is NULL
            nullable = [k for k in covered[0] if source.columns[k].nullable]
            self.bad(".key", f"key column(s) {', '.join(nullable)} of source table {spec.source} may be NULL, and "
                             "rows with a NULL key cannot be told apart: make them NOT NULL or use the primary key")

    # -- column plans: explicit mappings first, then same-named columns

    def explicit_plans(self) -> None:
        for tcol, cmap in self.spec.columns.items():
            sub = f".columns.{tcol}"
            if tcol not in self.target.columns:
                self.bad(sub, f"column {tcol!r} does not exist in target table {self.spec.target_table}"
                              f"{_did_you_mean(tcol, list(self.target.columns))}")
                if cmap.from_:
                    self.used_sources.add(cmap.from_)  # the source side is spoken for; one complaint is enough
                continue
            if cmap.transform:
                self._transform_plan(tcol, sub, cmap.transform, cmap.from_)
            elif cmap.from_ is not None:
                self._column_plan(tcol, sub, cmap.from_)
            elif cmap.expr is not None:
                self.plans.append(ColumnPlan(tcol, SourceKind.EXPR, expr=cmap.expr,
                                             inputs=expr_columns(cmap.expr, self.source.columns)))
            else:
                msg = _default_problem(cmap.default, self.target.columns[tcol])
                if msg:
                    self.bad(sub, msg)
                self.plans.append(ColumnPlan(tcol, SourceKind.DEFAULT, value=cmap.default))

    def _transform_plan(self, tcol: str, sub: str, dotted: str, from_: str | None) -> None:
        fn: Callable[[Any], Any] | None
        try:
            fn = load_callable(dotted)
        except Exception as exc:  # noqa: BLE001 - report any import failure as a problem
            self.bad(sub, f"cannot import transform {dotted!r}: {exc}")
            fn = None
        if from_ and from_ not in self.source.columns:
            self._no_source_column(sub, from_)
            self.guessing = True
        if from_:
            self.used_sources.add(from_)
        whole_row = tuple(c for c in self.source.columns if c not in self.spec.drop)
        self.plans.append(ColumnPlan(tcol, SourceKind.TRANSFORM, source=from_, transform=fn,
                                     inputs=(from_,) if from_ else whole_row))

    def _column_plan(self, tcol: str, sub: str, from_: str) -> None:
        if from_ not in self.source.columns:
            self._no_source_column(sub, from_)
            self.guessing = True
            return
        msg = _type_problem(self.source.columns[from_], self.target.columns[tcol])
        if msg:
            self.bad(sub, msg)
        self.used_sources.add(from_)
        self.plans.append(ColumnPlan(tcol, SourceKind.COLUMN, source=from_, inputs=(from_,)))

    def implicit_plans(self) -> None:
        mapped_targets = {p.target for p in self.plans} | set(self.spec.columns)
        for tcol, col in self.target.columns.items():
            if tcol in mapped_targets:
                continue
            if tcol in self.source.columns and tcol not in self.spec.drop:
                msg = _type_problem(self.source.columns[tcol], col)
                if msg:
                    self.bad(f".columns.{tcol}", msg)
                self.plans.append(ColumnPlan(tcol, SourceKind.COLUMN, source=tcol, inputs=(tcol,)))
                self.used_sources.add(tcol)
            elif not col.nullable and not col.has_default:
                self.bad(f".columns.{tcol}", f"target column {tcol!r} is NOT NULL without a default and nothing "
                                             "fills it (map it with from / expr / default / transform)")

    def check_sources_covered(self) -> None:
        """Every source column is migrated or dropped, and nothing is both."""
        for d in self.spec.drop:
            if d not in self.source.columns:
                self._no_source_column(".drop", d)
            elif d in self.used_sources:
                self.bad(".drop", f"column {d!r} is both dropped and mapped")
        if self.guessing or any((p.kind is SourceKind.TRANSFORM and p.source is None) or p.kind is SourceKind.EXPR
                                for p in self.plans):
            return  # a whole-row transform or an expression may read any column
        for scol in self.source.columns:
            if scol not in self.used_sources and scol not in self.spec.drop:
                self.bad(".columns", f"source column {scol!r} is not migrated: map it or list it under 'drop:'")

    # -- the target key, the version column

    def target_key(self, source_key: Sequence[str]) -> list[str]:
        """The mapped names of the source key columns; not checked against the target's unique keys when
        the source key is already wrong, since the target would be measured against the wrong columns."""
        key_targets: list[str] = []
        for k in source_key:
            hit = [p.target for p in self.plans if p.kind is SourceKind.COLUMN and p.source == k]
            if hit:
                key_targets.append(hit[0])
            elif k in self.source.columns:
                self.bad(".key", f"key column {k!r} must be copied as a plain column (renaming is fine)")
        source_key_ok = not any(p.where == f"{self.at}.key" for p in self.problems)
        target = self.target
        target_uniques = [set(target.primary_key)] if target.primary_key else []
        target_uniques += [set(u) for u in target.unique_keys]
        if source_key_ok and key_targets and set(key_targets) not in target_uniques:
            if target.primary_key:
                self.bad(".key", f"target key {key_targets} is not the primary key {target.primary_key} or a "
                                 f"unique key of {self.spec.target_table}: upserts need one")
            else:
                self.bad(".key", f"target table {self.spec.target_table} has no primary or unique key on "
                                 f"{key_targets}")
        return key_targets

    def version(self) -> tuple[str, str] | None:
        vsrc = self.spec.version_column
        if not vsrc:
            return None
        hit = [p.target for p in self.plans if p.kind is SourceKind.COLUMN and p.source == vsrc]
        if vsrc not in self.source.columns:
            self._no_source_column(".version_column", vsrc)
            return None
        if not hit:
            self.bad(".version_column", f"version column {vsrc!r} must be copied as a plain column")
            return None
        if self.source.columns[vsrc].kind not in (Kind.INT, Kind.TIMESTAMP, Kind.TIMESTAMPTZ, Kind.DECIMAL):
            self.bad(".version_column", f"version column {vsrc!r} must be a number or a timestamp")
        return vsrc, hit[0]


def compile_table(
    spec: TableSpec, source: TableInfo, target: TableInfo, where: str = ""
) -> tuple[TableMapping | None, list[Problem]]:
    """Check one table spec against both schemas; return the plan, or None and every problem found."""
    c = _TableCompiler(spec, source, target, where)
    source_key = c.source_key()
    c.explicit_plans()
    c.implicit_plans()
    c.check_sources_covered()
    key_targets = c.target_key(source_key)
    version = c.version()
    if spec.tenant_column and spec.tenant_column not in source.columns:
        c.bad(".tenant_column", f"column {spec.tenant_column!r} does not exist in source table {spec.source}")
    reverse = [r for r in (_reverse_plan(spec, col, rule, source, target, c.plans, version, c.bad)
                           for col, rule in spec.reverse.items()) if r is not None]
    if c.problems:
        return None, c.problems
    order = {name: i for i, name in enumerate(target.columns)}
    plans = sorted(c.plans, key=lambda p: order[p.target])
    mapping = TableMapping(
        source_table=spec.source, target_table=spec.target_table, source_key=tuple(source_key),
        target_key=tuple(key_targets), columns=tuple(plans), source_info=source, target_info=target,
        version=version, batch_size=spec.batch_size, tenant_column=spec.tenant_column,
        key_kinds=tuple(source.columns[k].kind for k in source_key), reverse=tuple(reverse),
    )
    return mapping, []


def identity_mapping(info_src: TableInfo, info_dst: TableInfo, key: Sequence[str] | None = None,
                     version: str | None = None, batch_size: int = 50_000) -> TableMapping:
    """A same-columns mapping, handy for tests and for tables moved unchanged."""
    spec = TableSpec(source=info_src.name, target=info_dst.name, key=list(key) if key else None,
                     version_column=version, batch_size=batch_size)
    mapping, problems = compile_table(spec, info_src, info_dst)
    if mapping is None:
        from dualwrite.errors import SchemaError  # noqa: PLC0415

        raise SchemaError(problems, "schema mismatch")
    return mapping
