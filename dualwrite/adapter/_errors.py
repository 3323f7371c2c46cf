"""How the adapter names and sorts failures: the routing error it raises, and the short, stable classes its
statistics count failures by (never a message with row data: :func:`short_error` is redacted)."""

from __future__ import annotations

from typing import Any

from dualwrite.config import redact
from dualwrite.errors import RoutingError, StoreUnavailableError, StrictWriteError
from dualwrite.store import is_mysql_error

__all__ = ["RoutingError", "error_class", "is_disconnect", "secondary_only", "short_error"]


def error_class(exc: BaseException) -> str:
    """A short, stable class name for counting failures ("unavailable", "timeout", or the exception type)."""
    if isinstance(exc, StrictWriteError) and exc.__cause__ is not None:
        return error_class(exc.__cause__)  # what the store said, not the wrapper
    if isinstance(exc, StoreUnavailableError):
        return "unavailable"
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    if sqlstate in ("57014", "55P03"):
        return "timeout"
    if sqlstate.startswith("08"):
        return "unavailable"
    args = getattr(exc, "args", ())
    if is_mysql_error(exc) and args and isinstance(args[0], int):
        if args[0] in (1205, 3024, 1969):
            return "timeout"
        if args[0] in (2002, 2003, 2006, 2013):
            return "unavailable"
    if type(exc).__module__.startswith("psycopg") and type(exc).__name__ == "OperationalError" and not sqlstate:
        return "unavailable"  # the connection broke (no SQLSTATE: the server never answered)
    if type(exc).__module__.startswith("redis"):  # redis-py: a socket timeout, a refused or broken connection
        if isinstance(exc, TimeoutError) or type(exc).__name__ == "TimeoutError":
            return "timeout"
        if type(exc).__name__ == "ConnectionError":
            return "unavailable"
    orig = getattr(exc, "orig", None)
    if orig is not None and orig is not exc:
        return error_class(orig)
    return type(exc).__name__


def is_disconnect(exc: BaseException) -> bool:
    """A connection that died under us (not a refused one, not an error the server reported)."""
    if type(exc).__module__.startswith("psycopg"):
        return type(exc).__name__ == "OperationalError" and not getattr(exc, "sqlstate", None)
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    return is_mysql_error(exc) and len(args) > 0 and args[0] in (2006, 2013)


def short_error(exc: BaseException) -> str:
    """The first line of an error, redacted and cut short: fit for a log line or a repair reason."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(text)[:200]


def secondary_only(exc: BaseException) -> bool:
    """A strict write that failed on the other store: the authoritative store did not fail (it was rolled
    back on purpose), so it is not counted as a primary failure (the secondary failure is counted)."""
    return isinstance(exc, StrictWriteError) and exc.role == "secondary"
