"""The audit's second pass, part one: what each name in a function (or a module's top level) holds.

Sessions and connections with where they came from (:class:`Origin`), objects of mapped classes and who
loaded them (:class:`Obj`), string constants: the :class:`ScopeResolver` binds them per scope, and the
checks (:mod:`dualwrite.audit._pychecks`) ask it about every node they look at."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from dualwrite.audit._pyindex import (
    _LOAD_ONE,
    _MAKERS,
    _SESSION_CLASSES,
    FileInfo,
    Index,
    MakerDef,
    ModelDef,
    _dotted,
    _first_mapped,
    _str_const,
    _terminal,
    _unawait,
)
from dualwrite.audit.report import Finding


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


class ScopeResolver:
    """The second pass over one file, as far as binding names goes: it walks every scope the first pass
    recorded, binds what each name holds, and hands every node to :meth:`_visit`, which
    :class:`~dualwrite.audit._pychecks.Analyzer` implements with the checks."""

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
        """Check one node of ``scope`` (the checks are the subclass's)."""
        raise NotImplementedError
