"""The audit's second pass, part two: every node of a scope checked for a write that bypasses the adapter.

Raw SQL text, SQLAlchemy Core statements on a migrated ``Table``, ORM writes through a session without
the dualwrite hook; each finding says what it rests on."""

from __future__ import annotations

import ast
import re

from dualwrite.audit._pyindex import (
    _DML,
    _ORM_WRITE_MANY,
    _ORM_WRITE_MAPPINGS,
    _ORM_WRITE_ONE,
    _STRINGY,
    SQL_SINKS,
    ModelDef,
    _dotted,
    _str_const,
    _terminal,
    _unawait,
)
from dualwrite.audit._pyscope import Origin, Scope, ScopeResolver
from dualwrite.audit.report import CORE, ORM, RAW_SQL
from dualwrite.audit.sql import MARKER_PREFIX, might_write, writes


class Analyzer(ScopeResolver):
    """The second pass over one file: the scope walk of :class:`ScopeResolver`, each node checked here."""

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
