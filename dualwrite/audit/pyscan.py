"""Walk Python source and find writes to migrated tables that bypass the dual-write adapter.

Two passes over the tree. The first indexes what the writes are made of, across every file: SQLAlchemy
``Table`` objects and ORM models with the table each maps, sessionmakers, and every
``dualwrite.adapter.install(maker, writer)`` (or ``install_async``). The second walks each function (and
each module's top level) and reports:

- **raw SQL**: string literals, f-strings, concatenations and ``%`` / ``.format`` templates whose literal
  parts make a write statement on a migrated table (:mod:`dualwrite.audit.sql` classifies them), with
  where the text goes (``text()``, ``cursor.execute()``, ``exec_driver_sql()``, ...) when that is visible;
- **Core**: ``insert(t)`` / ``update(t)`` / ``delete(t)`` (also the dialects' upsert ``insert``) and
  ``t.insert()`` / ``t.update()`` / ``t.delete()`` on a migrated ``Table``: the ORM hook captures only
  statements on ORM entities, so a Core statement on a Table is never mirrored;
- **ORM**: a migrated model added, merged, deleted, bulk-written, modified after loading, or written by a
  bulk ``query(...).update/delete`` or ``update(Model)`` statement, through a session that has no dualwrite
  hook. Which session that is, is a best-effort guess, and every finding says what it rests on: a
  session made by a sessionmaker of the tree is hooked when an ``install()`` names that sessionmaker; a
  ``Session(...)`` made directly never is (``install`` hooks a sessionmaker's sessions); a session whose
  origin cannot be seen (a parameter, ``self.session``, ``db.session``) is taken as hooked when the tree
  installs dualwrite on any sessionmaker, and as a bypass when it installs it nowhere.

Writes inside ``with writer.unit_of_work() as uow:`` whose keys the block names with ``uow.touch(table,
...)`` go through the adapter and are not findings. Writes through the adapter's own API
(``writer.insert("orders", ...)``, ``uow.update(...)``) never look like any of the above. Reads never do.
"""

from __future__ import annotations

import ast
import fnmatch
import io
import os
import re
import tokenize
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dualwrite.audit.report import CORE, ORM, RAW_SQL, Finding
from dualwrite.audit.sql import MARKER_PREFIX, TableSet, might_write, writes

_IGNORE_RE = re.compile(r"#.*\bdualwrite:\s*ignore\b", re.IGNORECASE)

SKIP_DIRS = frozenset({
    ".venv", "venv", "env", ".env", "build", "dist", "site-packages", "dist-packages", "node_modules",
    "__pycache__", ".git", ".hg", ".svn", ".tox", ".nox", ".eggs", ".mypy_cache", ".ruff_cache",
    ".pytest_cache",
})
"""Directories never descended into (virtual environments, build output, caches, VCS data)."""

SQL_SINKS = frozenset({
    "execute", "executemany", "exec_driver_sql", "executescript", "execute_values", "execute_batch",
    "copy", "copy_expert", "copy_from", "mogrify", "run_sql",
})
"""Calls that run an SQL text: DB-API cursors and connections, SQLAlchemy connections and sessions,
psycopg's COPY and ``psycopg2.extras`` helpers."""

_ORM_WRITE_ONE = frozenset({"add", "merge", "delete"})
_ORM_WRITE_MANY = frozenset({"add_all", "bulk_save_objects"})
_ORM_WRITE_MAPPINGS = frozenset({"bulk_insert_mappings", "bulk_update_mappings"})
_LOAD_ONE = frozenset({"first", "one", "one_or_none", "scalar", "scalar_one", "scalar_one_or_none", "get",
                       "get_or_404", "first_or_404", "one_or_404"})
_MAKERS = frozenset({"sessionmaker", "async_sessionmaker"})
_SCOPED = frozenset({"scoped_session", "async_scoped_session"})
_SESSION_CLASSES = frozenset({"Session", "AsyncSession"})
_DML = ("insert", "update", "delete")
_STRINGY = frozenset({ast.Constant, ast.JoinedStr, ast.BinOp, ast.Call})
_SCOPE_TYPES = frozenset({ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef})
_INDEXED_TYPES = frozenset({ast.Assign, ast.AnnAssign, ast.Call})


def discover(paths: Sequence[Path], exclude: Sequence[str] = ()) -> list[Path]:
    """The Python files under ``paths`` (a file named explicitly is always taken), in a stable order.

    Skipped directories (:data:`SKIP_DIRS`) and those an ``exclude`` pattern matches are pruned, not
    filtered afterwards: a virtual environment holds far more files than the application. A pattern
    (``fnmatch``) matches a directory's or file's name, or its path below the searched directory
    (``tests``, ``migrations/*``, ``seed_*.py``)."""

    def excluded(name: str, rel: str) -> bool:
        return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel, p) for p in exclude)

    out: list[Path] = []
    for p in paths:
        if p.is_file():
            out.append(p)
            continue
        found: list[Path] = []
        for root, dirs, files in os.walk(p):
            here = Path(root)
            rel = here.relative_to(p).as_posix()
            rel = "" if rel == "." else rel + "/"
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")
                       and not excluded(d, rel + d)]
            found += [here / f for f in files if f.endswith(".py") and not excluded(f, rel + f)]
        out += sorted(found)
    return list(dict.fromkeys(out))


def _module_name(path: Path) -> str:
    """The dotted module name, from the package directories (those with ``__init__.py``) above the file."""
    parts = [] if path.stem == "__init__" else [path.stem]
    d = path.resolve().parent
    while (d / "__init__.py").exists() and d.parent != d:
        parts.insert(0, d.name)
        d = d.parent
    return ".".join(parts) or path.stem


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a Name / Attribute chain, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _terminal(node: ast.expr) -> str | None:
    """The last name of ``x``, ``a.b.x``, ``x()``, ``a.x()``: what a receiver or callee is called."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _terminal(node.func)
    return None


def _unawait(node: ast.expr) -> ast.expr:
    return node.value if isinstance(node, ast.Await) else node


def _str_const(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


@dataclass
class TableDef:
    name: str
    """The table's name as the code gives it (``schema.table`` when a schema is given)."""
    path: str
    line: int
    via: str = ""
    """How the code reached it when not by a Table variable: ``Order.__table__``."""


@dataclass
class ModelDef:
    cls: str
    path: str
    line: int
    tablename: str | None = None
    schema: str | None = None
    table_expr: ast.expr | None = None
    bases: list[ast.expr] = field(default_factory=list)
    table: str | None = None
    """Resolved: the table it maps (its own, or the one of the mapped class it inherits from)."""


@dataclass
class MakerDef:
    name: str
    path: str
    line: int
    alias_of: str | None = None
    """``scoped_session(other_maker)``: installing ``other_maker`` hooks this one too."""
    scoped: bool = False
    """A ``scoped_session``: the object itself is used as a session (``db.add(...)``)."""


@dataclass
class FileInfo:
    path: Path
    shown: str
    module: str
    tree: ast.Module
    ignores: set[int]
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    """local name -> (module, imported name or None for ``import module``)."""
    constants: dict[str, str] = field(default_factory=dict)
    tables: dict[str, TableDef] = field(default_factory=dict)
    models: dict[str, ModelDef] = field(default_factory=dict)
    makers: dict[str, MakerDef] = field(default_factory=dict)
    installs: list[str] = field(default_factory=list)
    parents: dict[ast.AST, ast.AST] = field(default_factory=dict)
    scopes: dict[ast.AST, list[ast.AST]] = field(default_factory=dict)
    """module / function / class -> its own nodes (those of nested functions and classes excluded), in
    source order."""


def _ignored_lines(source: str) -> set[int]:
    out: set[int] = set()
    if _IGNORE_RE.search(source) is None:  # the common case, without tokenizing
        return out
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT and _IGNORE_RE.search(tok.string):
                out.add(tok.start[0])
    except (tokenize.TokenError, SyntaxError):
        pass
    return out


class Index:
    """What the first pass learned about every file: tables, models, sessionmakers, installs."""

    def __init__(self, tables: TableSet) -> None:
        self.migrated = tables
        self.files: dict[str, FileInfo] = {}
        """module name -> file (the first of that name)"""
        self.by_path: dict[str, FileInfo] = {}
        self._suffix: dict[str, FileInfo | None] = {}
        self.tables: dict[str, list[TableDef]] = {}
        self.models: dict[str, list[ModelDef]] = {}
        self.makers: dict[str, MakerDef] = {}
        self.installed: set[str] = set()

    # -- first pass ---------------------------------------------------------------------------------------

    def add(self, info: FileInfo) -> None:
        self.files.setdefault(info.module, info)
        self.by_path[info.shown] = info
        for n, t in info.tables.items():
            self.tables.setdefault(n, []).append(t)
        for n, m in info.models.items():
            self.models.setdefault(n, []).append(m)
        for n, mk in info.makers.items():
            self.makers.setdefault(n, mk)
        self.installed.update(info.installs)

    def finish(self) -> None:
        """Resolve what models map (``__table__``, inheritance) now that every file is indexed."""
        for _ in range(5):  # inheritance chains: a few rounds reach the fixpoint
            changed = False
            for defs in self.models.values():
                for m in defs:
                    if m.table is not None:
                        continue
                    info = self.by_path[m.path]
                    if m.tablename is not None:
                        m.table = f"{m.schema}.{m.tablename}" if m.schema else m.tablename
                    elif m.table_expr is not None:
                        t = self.table_of(info, m.table_expr)
                        m.table = t.name if t else None
                    else:
                        for b in m.bases:
                            base = self.model_of(info, b)
                            if base is not None and base.table is not None:
                                m.table = base.table
                                break
                    changed = changed or m.table is not None
            if not changed:
                break

    # -- resolution ---------------------------------------------------------------------------------------

    def module(self, name: str) -> FileInfo | None:
        """The scanned file of a module: by its dotted name, or one whose name ends the same way (the tree
        may have been scanned from inside a package, or a ``src/`` layout)."""
        if name in self.files:
            return self.files[name]
        if name not in self._suffix:
            hits = [f for m, f in self.files.items() if m.endswith("." + name) or name.endswith("." + m)]
            self._suffix[name] = hits[0] if len(hits) == 1 else None
        return self._suffix[name]

    def _imported(self, info: FileInfo, name: str) -> tuple[FileInfo | None, str]:
        """Where a name used in ``info`` comes from: the scanned file defining it (if any) and its name there."""
        if name in info.imports:
            mod, orig = info.imports[name]
            if orig is not None:
                return self.module(mod), orig
        return None, name

    def model_of(self, info: FileInfo, node: ast.expr) -> ModelDef | None:
        """The migrated-or-not model class ``node`` names (a Name, ``module.Model``), or None."""
        name: str | None = None
        target: FileInfo | None = info
        if isinstance(node, ast.Name):
            name = node.id
            if name not in info.models:
                target, name = self._imported(info, name)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            mod = info.imports.get(node.value.id)
            if mod is None or mod[1] is not None:
                return None
            target, name = self.module(mod[0]), node.attr
        if name is None:
            return None
        if target is not None and name in target.models:
            return target.models[name]
        defs = self.models.get(name)
        return defs[0] if defs and len({d.table for d in defs}) == 1 else _first_mapped(defs)

    def table_of(self, info: FileInfo, node: ast.expr) -> TableDef | None:
        """The Table ``node`` denotes: a ``Table(...)`` variable, ``Model.__table__``, ``metadata.tables["x"]``,
        or an inline ``Table("x", ...)`` / ``table("x")``."""
        node = _unawait(node)
        if isinstance(node, ast.Name):
            name = node.id
            if name in info.tables:
                return info.tables[name]
            target, orig = self._imported(info, name)
            if target is not None and orig in target.tables:
                return target.tables[orig]
            defs = self.tables.get(orig)
            return defs[0] if defs else None
        if isinstance(node, ast.Attribute) and node.attr == "__table__":
            m = self.model_of(info, node.value)
            return TableDef(m.table, m.path, m.line, f"{m.cls}.__table__") if m is not None and m.table else None
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            mod = info.imports.get(node.value.id)
            if mod is not None and mod[1] is None:
                target = self.module(mod[0])
                if target is not None and node.attr in target.tables:
                    return target.tables[node.attr]
            return None
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "tables":
            key = self.const(info, node.slice)
            return TableDef(key, info.shown, node.lineno) if key else None
        if isinstance(node, ast.Call):
            return _table_call(info, node)
        return None

    def const(self, info: FileInfo, node: ast.expr, scope: dict[str, str] | None = None) -> str | None:
        s = _str_const(node)
        if s is not None:
            return s
        if isinstance(node, ast.Name):
            if scope and node.id in scope:
                return scope[node.id]
            if node.id in info.constants:
                return info.constants[node.id]
            target, orig = self._imported(info, node.id)
            if target is not None:
                return target.constants.get(orig)
        return None

    def maker(self, info: FileInfo, name: str) -> MakerDef | None:
        if name in info.makers:
            return info.makers[name]
        target, orig = self._imported(info, name)
        if target is not None:
            return target.makers.get(orig)
        if name in info.imports:  # imported from outside the tree (a Session class, a framework's maker)
            return None
        return self.makers.get(name)

    def is_installed(self, mk: MakerDef) -> bool:
        seen: set[str] = set()
        cur: MakerDef | None = mk
        while cur is not None and cur.name not in seen:
            if cur.name in self.installed:
                return True
            seen.add(cur.name)
            cur = self.makers.get(cur.alias_of) if cur.alias_of else None
        return False


def _first_mapped(defs: list[ModelDef] | None) -> ModelDef | None:
    for d in defs or []:
        if d.table is not None:
            return d
    return defs[0] if defs else None


def _table_call(info: FileInfo, call: ast.Call) -> TableDef | None:
    """``Table("orders", metadata, ..., schema="app")`` or ``table("orders", ...)``: its name."""
    fn = _terminal(call.func)
    if fn not in ("Table", "table") or not call.args:
        return None
    name = _str_const(call.args[0])
    if name is None and isinstance(call.args[0], ast.Name):
        name = info.constants.get(call.args[0].id)
    if name is None:
        return None
    for kw in call.keywords:
        schema = _str_const(kw.value) if kw.arg == "schema" else None
        if schema:
            name = f"{schema}.{name}"
    return TableDef(name, info.shown, call.lineno)


# ---------------------------------------------------------------------------------------------------------
# first pass


def index_file(path: Path, shown: str, source: str) -> FileInfo:
    """Parse one file and collect its definitions (raises SyntaxError / ValueError when it does not parse)."""
    tree = ast.parse(source, filename=shown)
    info = FileInfo(path=path, shown=shown, module=_module_name(path), tree=tree, ignores=_ignored_lines(source))
    package = info.module.rsplit(".", 1)[0] if path.stem != "__init__" else info.module
    later: list[ast.AST] = []
    parents = info.parents
    scopes = info.scopes
    scopes[tree] = []
    # depth first, children pushed in reverse: nodes come out in source order
    stack: list[tuple[ast.AST, ast.AST]] = [(tree, tree)]
    while stack:
        node, owner = stack.pop()
        scopes[owner].append(node)
        kind = type(node)
        inner = owner
        if kind in _SCOPE_TYPES:
            later.append(node)
            scopes[node] = []
            inner = node
        children = list(ast.iter_child_nodes(node))
        for child in children:
            parents[child] = node
        stack.extend((child, inner) for child in reversed(children))
        if kind in _INDEXED_TYPES:
            later.append(node)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    info.imports[a.asname] = (a.name, None)
                else:
                    root = a.name.split(".")[0]
                    info.imports[root] = (root, None)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join([*base, mod] if mod else base)
            for a in node.names:
                info.imports[a.asname or a.name] = (mod, a.name)
    # constants and tables first: class bodies (``__tablename__ = NAME``) use them
    later.sort(key=lambda n: (isinstance(n, ast.ClassDef | ast.Call), getattr(n, "lineno", 0)))
    for node in later:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            _index_assign(info, node.targets[0].id, node.value, node.lineno)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            _index_assign(info, node.target.id, node.value, node.lineno)
        elif isinstance(node, ast.ClassDef):
            _index_class(info, node)
        elif isinstance(node, ast.Call):
            _index_call(info, node)
    return info


def _index_assign(info: FileInfo, name: str, value: ast.expr, line: int) -> None:
    s = _str_const(value)
    if s is not None:
        # a name assigned two different strings is no constant
        info.constants[name] = s if info.constants.get(name, s) == s else ""
        return
    if not isinstance(value, ast.Call):
        if isinstance(value, ast.Subscript) and isinstance(value.value, ast.Attribute) \
                and value.value.attr == "tables":
            key = _str_const(value.slice)
            if key:
                info.tables[name] = TableDef(key, info.shown, line)
        return
    fn = _terminal(value.func)
    table = _table_call(info, value)
    if table is not None:
        info.tables[name] = table
    elif fn in _MAKERS:
        info.makers[name] = MakerDef(name, info.shown, line)
    elif fn in _SCOPED and value.args:
        inner = value.args[0]
        alias = None if isinstance(inner, ast.Call) else _terminal(inner)
        info.makers[name] = MakerDef(name, info.shown, line, alias_of=alias, scoped=True)


def _index_class(info: FileInfo, node: ast.ClassDef) -> None:
    m = ModelDef(node.name, info.shown, node.lineno, bases=list(node.bases))
    for stmt in node.body:
        target: ast.expr | None = None
        value: ast.expr | None = None
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign):
            target, value = stmt.target, stmt.value
        if not isinstance(target, ast.Name) or value is None:
            continue
        if target.id == "__tablename__":
            m.tablename = _str_const(value) or (info.constants.get(value.id) if isinstance(value, ast.Name) else None)
            if m.tablename is None:
                m.tablename = ""  # computed (an f-string): a mapped class, table unknown
        elif target.id == "__table__":
            m.table_expr = value
        elif target.id == "__table_args__":
            args = value.elts[-1] if isinstance(value, ast.Tuple) and value.elts else value
            if isinstance(args, ast.Dict):
                for k, v in zip(args.keys, args.values, strict=True):
                    if k is not None and _str_const(k) == "schema":
                        m.schema = _str_const(v)
    if m.tablename == "":
        m.tablename = None
        m.table = ""
    if m.tablename is None and m.table_expr is None and any(
            k.arg == "table" and isinstance(k.value, ast.Constant) and k.value.value is True for k in node.keywords):
        m.tablename = node.name.lower()  # SQLModel: class Order(SQLModel, table=True) maps table "order"
    info.models[node.name] = m


def _index_call(info: FileInfo, call: ast.Call) -> None:
    fn = call.func
    name = _terminal(fn)
    if name in ("install", "install_async") and call.args and _from_dualwrite(info, fn):
        target = _terminal(call.args[0])
        if target:
            info.installs.append(target)
    elif name in ("map_imperatively", "mapper") and len(call.args) >= 2 and isinstance(call.args[0], ast.Name):
        cls = call.args[0].id
        m = info.models.get(cls) or ModelDef(cls, info.shown, call.lineno)
        m.table_expr = call.args[1]
        info.models[cls] = m


def _from_dualwrite(info: FileInfo, fn: ast.expr) -> bool:
    """Is this callee dualwrite's ``install`` (imported from a dualwrite module, or reached through one)?"""
    root = fn
    while isinstance(root, ast.Attribute):
        root = root.value
    if not isinstance(root, ast.Name):
        return False
    mod = info.imports.get(root.id)
    if mod is None:
        return info.module.startswith("dualwrite")
    return mod[0].startswith("dualwrite") or (mod[1] or "").startswith("dualwrite")


# ---------------------------------------------------------------------------------------------------------
# second pass


@dataclass(frozen=True)
class Origin:
    """Where a session (or connection) came from, as far as the code shows."""

    kind: str
    """'maker' (a sessionmaker of the tree), 'direct' (``Session(...)``), 'connection', 'unknown'."""
    maker: MakerDef | None = None
    text: str = ""


@dataclass(frozen=True)
class Obj:
    """A variable holding instances of a mapped class."""

    model: ModelDef
    origin: Origin | None
    """The session that loaded it; None for an object the code constructed."""
    many: bool = False


@dataclass
class Scope:
    node: ast.AST
    sessions: dict[str, Origin] = field(default_factory=dict)
    objects: dict[str, Obj] = field(default_factory=dict)
    constants: dict[str, str] = field(default_factory=dict)
    statements: list[ast.stmt] = field(default_factory=list)
    calls: list[ast.Call] = field(default_factory=list)
    modified: set[str] = field(default_factory=set)


class Analyzer:
    """The second pass over one file."""

    def __init__(self, index: Index, info: FileInfo) -> None:
        self.ix = index
        self.info = info
        self.findings: list[Finding] = []
        self._seen: set[tuple[int, str, str]] = set()
        self._members: dict[ast.ClassDef, dict[str, Origin]] = {}

    def run(self) -> list[Finding]:
        for owner, nodes in self.info.scopes.items():
            args: list[ast.arg] = []
            if isinstance(owner, ast.FunctionDef | ast.AsyncFunctionDef):
                a = owner.args
                args = [*a.posonlyargs, *a.args, *a.kwonlyargs]
            self._scope(owner, [n for n in nodes if n is not owner], args)
        return self.findings

    # -- helpers ------------------------------------------------------------------------------------------

    def _report(self, node: ast.AST, line: int, table: str, kind: str, why: str) -> None:
        key = (line, table, kind)
        if key in self._seen:
            return
        self._seen.add(key)
        stmt = self._stmt_of(node)
        lines = {line}
        if stmt is not None:
            lines |= {stmt.lineno, stmt.end_lineno or stmt.lineno}
        suppressed = bool(lines & self.info.ignores)
        self.findings.append(Finding(self.info.shown, line, table, kind, why, suppressed))

    def _stmt_of(self, node: ast.AST) -> ast.stmt | None:
        cur: ast.AST | None = node
        while cur is not None and not isinstance(cur, ast.stmt):
            cur = self.info.parents.get(cur)
        return cur if isinstance(cur, ast.stmt) else None

    def _migrated(self, name: str | None) -> str | None:
        if not name:
            return None
        return self.ix.migrated.match(tuple(name.split(".")))

    def _model(self, node: ast.expr) -> ModelDef | None:
        m = self.ix.model_of(self.info, node)
        return m if m is not None and self._migrated(m.table) else None

    def _is_sqlalchemy(self, fn: ast.expr) -> bool:
        """A bare ``insert`` / ``update`` / ``delete`` from sqlalchemy, or ``sa.insert`` / ``postgresql.insert``."""
        if isinstance(fn, ast.Name):
            mod = self.info.imports.get(fn.id)
            return mod is not None and mod[0].startswith("sqlalchemy")
        root = fn
        while isinstance(root, ast.Attribute):
            root = root.value
        if isinstance(root, ast.Name):
            mod = self.info.imports.get(root.id)
            return mod is not None and (mod[0].startswith("sqlalchemy") or (mod[1] or "").startswith("sqlalchemy"))
        return False

    # -- sessions and objects -----------------------------------------------------------------------------

    def _origin_of_ctor(self, scope: Scope, node: ast.expr) -> Origin | None:
        """What ``with E as x`` / ``x = E`` binds when E makes a session or a connection."""
        node = _unawait(node)
        if not isinstance(node, ast.Call):
            if isinstance(node, ast.Attribute) and node.attr == "connection":  # uow.connection
                return Origin("connection", text=_dotted(node) or "connection")
            return None
        fn = node.func
        if isinstance(fn, ast.Attribute) and fn.attr in ("begin", "begin_nested"):
            recv = fn.value
            if isinstance(recv, ast.Name) and recv.id in scope.sessions:
                return scope.sessions[recv.id]
            term = _terminal(recv) if isinstance(recv, ast.Name | ast.Attribute) else None
            mk = None if term is None else (
                self.ix.maker(self.info, term) if isinstance(recv, ast.Name) else self.ix.makers.get(term))
            if mk is not None:
                return Origin("maker", mk, mk.name)
            session = self._session(scope, recv)
            if session is not None:  # session.begin(): the same session
                return session
            if fn.attr == "begin":  # engine.begin(): a connection
                return Origin("connection", text=f"{_dotted(fn) or 'begin'}()")
            return None
        if isinstance(fn, ast.Attribute) and fn.attr in ("connect", "connection", "raw_connection", "cursor"):
            return Origin("connection", text=f"{_dotted(fn) or fn.attr}()")
        name = _dotted(fn)
        if name is None:
            if isinstance(fn, ast.Call) and _terminal(fn.func) in _MAKERS:  # sessionmaker(...)()
                return Origin("maker", MakerDef("sessionmaker(...)", self.info.shown, node.lineno), "sessionmaker(...)")
            return None
        last = name.rsplit(".", 1)[-1]
        mk = self.ix.maker(self.info, last) if "." not in name else self.ix.makers.get(last)
        if mk is not None:
            return Origin("maker", mk, mk.name)
        if last in _SESSION_CLASSES:
            return Origin("direct", text=f"{last}(...)")
        return None

    def _session(self, scope: Scope, recv: ast.expr) -> Origin | None:
        """The origin of a receiver that is a session; None when it does not look like one."""
        recv = _unawait(recv)
        if isinstance(recv, ast.Name):
            if recv.id in scope.sessions:
                return scope.sessions[recv.id]
            mk = self.ix.maker(self.info, recv.id)
            if mk is not None and mk.scoped:
                return Origin("maker", mk, mk.name)
        if isinstance(recv, ast.Call):
            o = self._origin_of_ctor(scope, recv)
            if o is not None:
                return o
        if isinstance(recv, ast.Attribute) and isinstance(recv.value, ast.Name) and recv.value.id == "self":
            o = self._member(scope, recv.attr)
            if o is not None:
                return o
        term = _terminal(recv)
        if term is None:
            return None
        low = term.lower()
        if "session" in low or "sess" in low or low in ("db", "s", "dbs", "uow_session"):
            return Origin("unknown", text=_dotted(recv) or term)
        return None

    def _member(self, scope: Scope, attr: str) -> Origin | None:
        """``self.attr`` in a method: what any method of the class assigns to it (``self.session =
        SessionLocal()`` in ``__init__``), when that is a session or a connection."""
        cls = self.info.parents.get(scope.node)
        if not isinstance(cls, ast.ClassDef):
            return None
        if cls not in self._members:
            found: dict[str, Origin] = {}
            for method in cls.body:
                if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for n in self.info.scopes.get(method, []):
                    if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Attribute) \
                            and isinstance(n.targets[0].value, ast.Name) and n.targets[0].value.id == "self":
                        o = self._origin_of_ctor(Scope(method), n.value)
                        if o is not None:
                            found.setdefault(n.targets[0].attr, o)
            self._members[cls] = found
        return self._members[cls].get(attr)

    def _bypass(self, origin: Origin) -> str | None:
        """Why a session of this origin has no dualwrite hook, or None when it has (or is presumed to)."""
        if origin.kind == "maker" and origin.maker is not None:
            mk = origin.maker
            if self.ix.is_installed(mk):
                return None
            return (f"its session comes from sessionmaker '{mk.name}' ({mk.path}:{mk.line}) and no "
                    f"dualwrite install({mk.name}, writer) is in the scanned tree")
        if origin.kind == "direct":
            return (f"the session is made directly with {origin.text}, which no dualwrite hook reaches "
                    "(install() hooks the sessions a sessionmaker makes)")
        if origin.kind == "connection":
            return f"it runs on a connection ({origin.text}), which the ORM hook never sees"
        if self.ix.installed:
            return None
        return (f"the session ({origin.text}) comes from where the audit cannot see, and no dualwrite "
                "install() of a sessionmaker is anywhere in the scanned tree")

    def _object(self, scope: Scope, node: ast.expr) -> Obj | None:
        """Instances of a migrated model that ``node`` evaluates to (constructed or loaded)."""
        node = _unawait(node)
        if isinstance(node, ast.Name):
            return scope.objects.get(node.id)
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            for e in node.elts:
                o = self._object(scope, e)
                if o is not None:
                    return Obj(o.model, o.origin, many=True)
            return None
        if isinstance(node, ast.ListComp | ast.GeneratorExp | ast.SetComp):
            o = self._object(scope, node.elt)
            return Obj(o.model, o.origin, many=True) if o else None
        if not isinstance(node, ast.Call):
            return None
        m = self._model(node.func)
        if m is not None:
            return Obj(m, None)
        # loaded through a session: s.get(M, ...), s.query(M)...., s.scalars(select(M))..., s.execute(select(M))...
        chain: list[str] = []
        cur: ast.expr = node
        while isinstance(cur, ast.Call) and isinstance(cur.func, ast.Attribute):
            attr = cur.func.attr
            recv = cur.func.value
            if attr in ("get", "get_one", "merge", "query", "scalars", "scalar", "execute", "refresh") \
                    and self._session(scope, recv) is not None:
                origin = self._session(scope, recv)
                model = None
                if attr in ("get", "get_one", "query") and cur.args:
                    model = self._model(cur.args[0])
                elif attr in ("scalars", "scalar", "execute") and cur.args:
                    model = self._selected(cur.args[0])
                elif attr == "merge" and cur.args:
                    inner = self._object(scope, cur.args[0])
                    model = inner.model if inner else None
                if model is None:
                    return None
                one = attr in ("get", "get_one", "merge", "scalar") or (bool(chain) and chain[-1] in _LOAD_ONE)
                return Obj(model, origin, many=not one)
            chain.insert(0, attr)
            cur = _unawait(recv)
        return None

    def _selected(self, node: ast.expr) -> ModelDef | None:
        """The migrated model of a ``select(M)...`` expression."""
        cur = _unawait(node)
        while isinstance(cur, ast.Call):
            if _terminal(cur.func) == "select" and cur.args and isinstance(cur.func, ast.Name | ast.Attribute) \
                    and (isinstance(cur.func, ast.Name) or not isinstance(cur.func.value, ast.Call)):
                return self._model(cur.args[0])
            if isinstance(cur.func, ast.Attribute):
                cur = cur.func.value
            else:
                return None
        return None

    # -- the scope walk -----------------------------------------------------------------------------------

    def _scope(self, node: ast.AST, nodes: list[ast.AST], args: list[ast.arg]) -> None:
        scope = Scope(node)
        scope.statements = [n for n in nodes if isinstance(n, ast.stmt)]
        scope.calls = [n for n in nodes if isinstance(n, ast.Call)]
        for a in args:
            if a.annotation is None:
                continue
            self._bind_annotation(scope, a.arg, a.annotation)
        for _ in range(2):  # twice: a binding may use one made later in the text (loops)
            for stmt in scope.statements:
                self._bind(scope, stmt)
        for n in nodes:
            self._visit(scope, n)

    def _bind_annotation(self, scope: Scope, name: str, ann: ast.expr) -> None:
        if isinstance(ann, ast.Subscript) and _terminal(ann.value) in _MAKERS:
            return  # a sessionmaker, not a session
        for sub in ast.walk(ann):
            if isinstance(sub, ast.Name | ast.Attribute):
                term = _terminal(sub)
                if term in _SESSION_CLASSES:
                    scope.sessions.setdefault(name, Origin("unknown", text=name))
                    return
                m = self._model(sub)
                if m is not None:
                    many = isinstance(ann, ast.Subscript) and _terminal(ann.value) in (
                        "list", "List", "Sequence", "Iterable", "set", "tuple")
                    scope.objects[name] = Obj(m, Origin("unknown", text="a caller's session"), many=many)
                    return
            s = _str_const(sub) if isinstance(sub, ast.expr) else None
            if s is not None and s in self.ix.models:
                m = _first_mapped(self.ix.models[s])
                if m is not None and self._migrated(m.table):
                    scope.objects[name] = Obj(m, Origin("unknown", text="a caller's session"))
                    return

    def _bind(self, scope: Scope, stmt: ast.stmt) -> None:
        if isinstance(stmt, ast.With | ast.AsyncWith):
            for item in stmt.items:
                if isinstance(item.optional_vars, ast.Name):
                    o = self._origin_of_ctor(scope, item.context_expr)
                    if o is not None:
                        scope.sessions[item.optional_vars.id] = o
        elif isinstance(stmt, ast.Assign | ast.AnnAssign):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            value = stmt.value
            if value is None or len(targets) != 1 or not isinstance(targets[0], ast.Name):
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    self._bind_annotation(scope, stmt.target.id, stmt.annotation)
                return
            name = targets[0].id
            s = _str_const(value)
            if s is not None:
                scope.constants[name] = s if scope.constants.get(name, s) == s else ""
                return
            o = self._origin_of_ctor(scope, value)
            if o is not None:
                scope.sessions[name] = o
                return
            obj = self._object(scope, value)
            if obj is not None:
                scope.objects[name] = obj
            elif isinstance(stmt, ast.AnnAssign):
                self._bind_annotation(scope, name, stmt.annotation)
        elif isinstance(stmt, ast.For | ast.AsyncFor) and isinstance(stmt.target, ast.Name):
            obj = self._object(scope, stmt.iter)
            if obj is not None:
                scope.objects[stmt.target.id] = Obj(obj.model, obj.origin, many=False)

    def _visit(self, scope: Scope, node: ast.AST) -> None:
        if type(node) in _STRINGY and isinstance(node, ast.expr) and self._is_string_expr(node) \
                and not self._inside_string_expr(node):
            self._raw_sql(scope, node)
        if isinstance(node, ast.Call):
            self._core(scope, node)
            self._orm_call(scope, node)
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name):
                    self._modified(scope, t.value.id, node)

    # -- raw SQL ------------------------------------------------------------------------------------------

    def _is_string_expr(self, node: ast.expr) -> bool:
        if _str_const(node) is not None or isinstance(node, ast.JoinedStr):
            return True
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self._is_string_expr(node.left) or self._is_string_expr(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            return self._is_string_expr(node.left)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
            return _str_const(node.func.value) is not None
        return False

    def _inside_string_expr(self, node: ast.expr) -> bool:
        """Part of a larger string expression (handled there), or a bare string statement (a docstring)."""
        parent = self.info.parents.get(node)
        if isinstance(parent, ast.Expr):
            return True
        if isinstance(parent, ast.JoinedStr | ast.FormattedValue):
            return True
        if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Add | ast.Mod):
            return self._is_string_expr(parent)
        return isinstance(parent, ast.Attribute) and parent.attr == "format"

    def _skeleton(self, scope: Scope, node: ast.expr, counter: list[int]) -> str:
        """The SQL text of a string expression, each unknown part replaced by a marker name."""
        s = _str_const(node)
        if s is not None:
            return s
        if isinstance(node, ast.JoinedStr):
            return "".join(self._skeleton(scope, v.value if isinstance(v, ast.FormattedValue) else v, counter)
                           for v in node.values)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self._skeleton(scope, node.left, counter) + self._skeleton(scope, node.right, counter)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            return self._skeleton(scope, node.left, counter)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
            template = _str_const(node.func.value) or ""
            return re.sub(r"\{[^{}]*\}", lambda _m: self._marker(counter), template)
        known = self.ix.const(self.info, node, scope.constants)
        if known:
            return known
        return self._marker(counter)

    @staticmethod
    def _marker(counter: list[int]) -> str:
        counter[0] += 1
        return f"{MARKER_PREFIX}{counter[0]}__"

    def _raw_sql(self, scope: Scope, node: ast.expr) -> None:
        text = self._skeleton(scope, node, [0])
        if not might_write(text):
            return
        found = writes(text)
        if not found:
            return
        context = self._sql_context(scope, node)
        exact = _str_const(node) is not None and (node.end_lineno or node.lineno) - node.lineno == text.count("\n")
        for w in found:
            table = self.ix.migrated.match(w.table)
            if table is None:
                continue
            uow = self._unit_of_work(node, table)
            if uow is True:
                continue
            line = node.lineno + (text[: w.offset].count("\n") if exact else 0)
            why = f"{w.what} in raw SQL{context} bypasses the dual-write adapter"
            if isinstance(uow, str):
                why += f"; {uow}"
            self._report(node, line, table, RAW_SQL, why)

    def _sql_context(self, scope: Scope, node: ast.expr) -> str:
        """Where the SQL text goes, as far as this scope shows: `` in text() run by conn.execute()``."""
        parts: list[str] = []
        cur: ast.AST = node
        parent = self.info.parents.get(cur)
        if isinstance(parent, ast.Call) and node in parent.args and _terminal(parent.func) == "text":
            parts.append(" in text()")
            cur = parent
            parent = self.info.parents.get(cur)
        if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Attribute) and parent.func.attr in SQL_SINKS:
            return "".join(parts) + f" run by {self._callee(parent.func)}()"
        if isinstance(parent, ast.Call) and _terminal(parent.func) in ("execute_values", "execute_batch"):
            return "".join(parts) + f" run by {_terminal(parent.func)}()"
        if isinstance(parent, ast.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0], ast.Name):
            var = parent.targets[0].id
            for n in scope.calls:
                if isinstance(n.func, ast.Attribute) and _is_sink(n) and _refers(n.args[0], var):
                    return "".join(parts) + f" (as {var}) run by {self._callee(n.func)}() on line {n.lineno}"
            return "".join(parts) + f" (assigned to {var})"
        return "".join(parts) or " in a string"

    @staticmethod
    def _callee(fn: ast.Attribute) -> str:
        recv = _dotted(fn.value) or (f"{_terminal(fn.value)}()" if _terminal(fn.value) else "...")
        return f"{recv}.{fn.attr}"

    def _unit_of_work(self, node: ast.AST, table: str) -> bool | str | None:
        """Inside ``with w.unit_of_work() as uow``: True when the block touches ``table``'s keys (the adapter
        mirrors them), else a hint; None outside any unit of work."""
        cur: ast.AST | None = self.info.parents.get(node)
        while cur is not None and not isinstance(cur, ast.FunctionDef | ast.AsyncFunctionDef | ast.Module):
            if isinstance(cur, ast.With | ast.AsyncWith):
                for item in cur.items:
                    ctx = _unawait(item.context_expr)
                    if isinstance(ctx, ast.Call) and _terminal(ctx.func) == "unit_of_work" \
                            and isinstance(item.optional_vars, ast.Name):
                        uow = item.optional_vars.id
                        for stmt in cur.body:
                            for n in ast.walk(stmt):
                                if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) \
                                        and n.func.attr == "touch" and _refers(n.func.value, uow) and n.args:
                                    named = _str_const(n.args[0])
                                    if named is None or self._migrated(named) == table:
                                        return True
                        return (f"it runs inside {uow} = ...unit_of_work() but no {uow}.touch('{table}', key) "
                                "names the keys it writes, so they are never mirrored")
            cur = self.info.parents.get(cur)
        return None

    # -- SQLAlchemy Core ----------------------------------------------------------------------------------

    def _core(self, scope: Scope, call: ast.Call) -> None:
        fn = call.func
        verb = _terminal(fn)
        if verb not in _DML:
            return
        target: ast.expr | None = None
        if call.args and self._is_sqlalchemy(fn):  # insert(t), sa.update(t), postgresql.insert(t)
            target = call.args[0]
        elif isinstance(fn, ast.Attribute) and not call.args:  # t.insert(), Model.__table__.delete()
            target = fn.value
        if target is None:
            return
        table_def = self.ix.table_of(self.info, target)
        if table_def is not None and table_def.name is not None:
            table = self._migrated(table_def.name)
            if table is None:
                return
            uow = self._unit_of_work(call, table)
            if uow is True:
                return
            where = f"{table_def.via} of {table_def.path}:{table_def.line}" if table_def.via else \
                f"{table_def.path}:{table_def.line}"
            why = (f"Core {verb}() on Table '{table_def.name}' ({where}) bypasses the "
                   "dual-write adapter: the ORM hook sees statements on ORM entities only; use writer."
                   f"{verb}() or uow.{verb}(), or name the keys with uow.touch()")
            if isinstance(uow, str):
                why += f"; {uow}"
            self._report(call, call.lineno, table, CORE, why)
            return
        if call.args and self._is_sqlalchemy(fn):
            m = self._model(call.args[0])
            if m is not None and m.table:
                origin = self._executed_by(scope, call)
                reason = self._bypass(origin)
                if reason is not None:
                    self._report(call, call.lineno, self._migrated(m.table) or m.table, ORM,
                                 f"ORM {verb}({m.cls}) statement writes the table without the dualwrite hook: "
                                 f"{reason}")

    def _executed_by(self, scope: Scope, stmt_node: ast.expr) -> Origin:
        """Which session or connection runs a statement built at ``stmt_node`` (directly or via a variable)."""
        cur: ast.AST = stmt_node
        parent = self.info.parents.get(cur)
        # climb the builder chain: update(M).where(...).values(...)
        while isinstance(parent, ast.Attribute) and isinstance(self.info.parents.get(parent), ast.Call):
            cur = self.info.parents[parent]
            parent = self.info.parents.get(cur)
        if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Attribute) and parent.func.attr in SQL_SINKS:
            return self._session(scope, parent.func.value) or self._receiver_origin(scope, parent.func.value)
        if isinstance(parent, ast.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0], ast.Name):
            var = parent.targets[0].id
            for n in scope.calls:
                if isinstance(n.func, ast.Attribute) and _is_sink(n) and _refers(n.args[0], var):
                    return self._session(scope, n.func.value) or self._receiver_origin(scope, n.func.value)
        return Origin("unknown", text="not visible here")

    def _receiver_origin(self, scope: Scope, recv: ast.expr) -> Origin:
        if isinstance(recv, ast.Name) and recv.id in scope.sessions:
            return scope.sessions[recv.id]
        o = self._origin_of_ctor(scope, recv) if isinstance(recv, ast.Call | ast.Attribute) else None
        if o is not None:
            return o
        return Origin("unknown", text=_dotted(recv) or "?")

    # -- ORM ----------------------------------------------------------------------------------------------

    def _orm_call(self, scope: Scope, call: ast.Call) -> None:
        fn = call.func
        if not isinstance(fn, ast.Attribute):
            if isinstance(fn, ast.Name) and fn.id == "setattr" and call.args and isinstance(call.args[0], ast.Name):
                self._modified(scope, call.args[0].id, call)
            return
        attr = fn.attr
        model: ModelDef | None = None
        origin: Origin | None = None
        what = ""
        if attr in _ORM_WRITE_ONE | _ORM_WRITE_MANY and call.args:
            origin = self._session(scope, fn.value)
            obj = self._object(scope, call.args[0]) if origin is not None else None
            if obj is not None:
                model, what = obj.model, f"session.{attr}() of {obj.model.cls}"
        elif attr in _ORM_WRITE_MAPPINGS and call.args:
            origin = self._session(scope, fn.value)
            model = self._model(call.args[0]) if origin is not None else None
            what = f"session.{attr}({model.cls if model else ''})"
        elif attr in ("update", "delete"):
            # s.query(M).filter(...).update({...}) / .delete()
            cur = fn.value
            while isinstance(cur, ast.Call) and isinstance(cur.func, ast.Attribute):
                if cur.func.attr == "query" and cur.args:
                    origin = self._session(scope, cur.func.value)
                    model = self._model(cur.args[0]) if origin is not None else None
                    what = f"query({model.cls if model else ''}).{attr}()"
                    break
                cur = cur.func.value
            # Flask-SQLAlchemy: Order.query.filter(...).delete() runs on the extension's db.session
            if model is None and isinstance(cur, ast.Attribute) and cur.attr == "query":
                model = self._model(cur.value)
                origin = Origin("unknown", text=f"{_dotted(cur) or 'Model.query'}, the extension's session")
                what = f"{model.cls if model else ''}.query.{attr}()"
        if model is None or origin is None or not model.table:
            return
        reason = self._bypass(origin)
        if reason is None:
            return
        table = self._migrated(model.table) or model.table
        self._report(call, call.lineno, table, ORM, f"{what} writes the table without the dualwrite hook: {reason}")

    def _modified(self, scope: Scope, var: str, node: ast.AST) -> None:
        obj = scope.objects.get(var)
        if obj is None or obj.origin is None or not obj.model.table:
            return
        if var in scope.modified:  # one finding per loaded object per scope: its first change
            return
        reason = self._bypass(obj.origin)
        if reason is None:
            return
        scope.modified.add(var)
        table = self._migrated(obj.model.table) or obj.model.table
        line = getattr(node, "lineno", 0)
        self._report(node, line, table, ORM, f"a loaded {obj.model.cls} is modified and the session's flush writes "
                                             f"the table without the dualwrite hook: {reason}")


def _refers(node: ast.expr, var: str) -> bool:
    """``var`` itself, or ``text(var)`` / ``sa.text(var)``."""
    node = _unawait(node)
    if isinstance(node, ast.Name):
        return node.id == var
    if isinstance(node, ast.Call) and _terminal(node.func) == "text" and node.args:
        return _refers(node.args[0], var)
    return False


def _is_sink(call: ast.Call) -> bool:
    """A call that runs the SQL text (or statement) it is given first."""
    return isinstance(call.func, ast.Attribute) and call.func.attr in SQL_SINKS and bool(call.args)
