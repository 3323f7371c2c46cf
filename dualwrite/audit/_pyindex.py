"""The audit's first pass: what the writes are made of, across every file of the tree.

SQLAlchemy ``Table`` objects and ORM models with the table each maps, sessionmakers, module constants and
every ``dualwrite.adapter.install(maker, writer)``, indexed per file (:func:`index_file`) and resolved
across files (:class:`Index`), so that the second pass can tell which table a statement writes."""

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

from dualwrite.audit.sql import TableSet

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
        elif isinstance(node, ast.Import | ast.ImportFrom):
            _index_import(info, node, package)
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


def _index_import(info: FileInfo, node: ast.Import | ast.ImportFrom, package: str) -> None:
    """Record the names an import binds: ``{local name: (module, imported name or None)}``, relative
    imports resolved against ``package``."""
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.asname:
                info.imports[a.asname] = (a.name, None)
            else:
                root = a.name.split(".")[0]
                info.imports[root] = (root, None)
        return
    mod = node.module or ""
    if node.level:
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        mod = ".".join([*base, mod] if mod else base)
    for a in node.names:
        info.imports[a.asname or a.name] = (mod, a.name)


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
