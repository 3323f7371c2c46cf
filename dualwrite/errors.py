"""The one exception hierarchy of dualwrite.

Everything dualwrite raises on purpose derives from :class:`DualwriteError`, so an application or an
operator script can catch the whole family with one ``except``. Configuration and schema problems are
collected, never raised one at a time: :class:`ConfigError` carries every :class:`Problem` found, each
with the place it was found, because fixing a spec one error per run is a miserable way to spend a day.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong, and where: ``where`` reads like ``spec.yaml:12 tables[0].columns.total``."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class DualwriteError(Exception):
    """Base of every error dualwrite raises on purpose."""


class ConfigError(DualwriteError):
    """Bad input found before anything was written: carries every problem at once."""

    def __init__(self, problems: Iterable[Problem], headline: str = "invalid configuration") -> None:
        self.problems: list[Problem] = list(problems)
        self.headline = headline
        super().__init__(self._render())

    def _render(self) -> str:
        lines = [f"{self.headline} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''})"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class SpecError(ConfigError):
    """The migration spec file is malformed or inconsistent."""


class SchemaError(ConfigError):
    """The live stores do not match what the spec says (missing tables, columns, keys, bad types)."""


class UnknownStoreError(ConfigError):
    """A store name in the spec has no URL in the environment or the config file."""


class StoreError(DualwriteError):
    """A store could not be reached or refused an operation."""


class StoreUnavailableError(StoreError):
    """A store is down or refuses connections; callers may retry later."""


class PermanentStoreError(StoreError):
    """A store refused an operation in a way that repeating it cannot change: only an operator can (grant a
    privilege, fix a constraint, clean a row). Retrying it forever would look like progress and be none."""


class StorePermissionError(PermanentStoreError):
    """The account lacks a privilege or the ownership a statement needs (``must be owner of table ...``,
    ``permission denied``, MySQL's ``command denied``)."""


class RowRejectedError(PermanentStoreError):
    """The target rejected a row: a unique, not-null, check or foreign-key constraint, or a value its type
    cannot hold. The same rows fail the same way on every retry. The message never quotes the values."""


class WriteFencedError(DualwriteError):
    """A write waited for a write fence (authority moving between the stores) longer than the adapter's
    ``fence_max_wait``, or was routed before the authority moved: nothing was written; retry the request."""


class AuthorityMovedError(DualwriteError):
    """A relay round was about to mirror into a store that is no longer denied (authority moved to it since
    the round read the phase): nothing was written; the next round reads the new phase. Not permanent."""


class StrictWriteError(DualwriteError):
    """A ``strict`` write failed, and neither store keeps it: ``store`` says which one failed.

    ``store`` is ``'old'`` or ``'new'``: the store that refused or timed out. Strict is
    the seed's synchronous strategy: the request fails if either store fails, so the application must
    treat this like any failed transaction (retry or report), never as half done."""

    def __init__(self, message: str, *, store: str, role: str) -> None:
        self.store = store
        self.role = role
        """'authoritative' (its commit failed after the other store had committed: that one was restored)
        or 'secondary' (the other store failed: the authoritative transaction was rolled back)."""
        super().__init__(message)


class PhaseUnknownError(StoreUnavailableError):
    """The phase was never read (the control store was unreachable from the start): nowhere safe to write."""


class RoutingError(DualwriteError):
    """A write that cannot be routed: unknown table or column, or a store the mapping cannot reach."""


class TenantColumnError(DualwriteError, ValueError):
    """The table has no tenant column (or it cannot be followed through the mapping). Also a ``ValueError``,
    which it was before it joined the hierarchy."""


class CaptureError(DualwriteError):
    """Change capture cannot be set up or read on this store (settings, privileges, a missing slot, a key
    type the capture cannot log): only an operator can change that, so it is permanent."""


class TriggerError(CaptureError):
    """Triggers cannot capture this table on this store (an unsupported key type)."""


class SchemaChangedError(CaptureError):
    """A migrated table's columns changed on the source during the migration (seen in the stream)."""


class PgOutputError(CaptureError, ValueError):
    """A ``pgoutput`` message the decoder does not understand (a corrupt or newer stream). Also a
    ``ValueError``, which it was before it joined the hierarchy."""


class CaptureEndedError(CaptureError):
    """Capture of a migration that was aborted or cleaned up cannot start again: an activity still running
    after the end (a terminated relay's drain, a late denial) must not leave a slot behind. A new run of the
    migration (its preflight) lifts this."""


class CaptureLostError(CaptureError):
    """Capture lost changes: the replication slot vanished after it had started, or the binlog no longer
    holds the stored position. Changes in between were never mirrored: restart the relay, then run a
    verification with repair before any cutover."""


class CaptureTruncatedError(CaptureError):
    """A TRUNCATE of a migrated table was seen in the log: it is not mirrored (a key-by-key mirror cannot
    replay it), so the stores differ until a verification with repair levels them."""


class SlotBusyError(DualwriteError):
    """Another session reads the replication slot right now (the relay and a catch-up share it): try again
    shortly. Not permanent."""


class ServerStartError(DualwriteError):
    """A private capture-enabled database server (tests, benchmarks) could not be started."""


class RetireError(DualwriteError):
    """CLEANUP found an old table gone that this migration did not retire: only an operator can tell why."""


class RepairRefusedError(DualwriteError):
    """A verification's repair was not applied: authority moved away from the store it copies from, or a
    write fence is up (authority is moving). Copying in the old direction then would overwrite acknowledged
    writes of the new authority; the next verification repairs in the right direction."""


class VerificationError(DualwriteError):
    """A verification could not prove anything: it compared zero rows or skipped a chunk."""


PERMANENT: tuple[type[DualwriteError], ...] = (ConfigError, VerificationError, PermanentStoreError, CaptureError,
                                               RetireError)
"""The roots of the errors no retry can fix: bad input, a verification that proved nothing, a store that
refuses for good, a capture the store cannot run, an old table gone without this migration. Everything below
them in this hierarchy is permanent too (every class lives in this module, so the list below is complete
wherever it is computed, a workflow sandbox included)."""


def is_permanent(exc: BaseException) -> bool:
    return isinstance(exc, PERMANENT)


def permanent_error_types() -> list[str]:
    """Names of every permanent class (the roots and all their subclasses): what a Temporal retry policy
    lists as ``non_retryable_error_types``, because an activity
    reports a dualwrite error with its class name as the failure type."""
    out: list[str] = []
    todo: list[type[BaseException]] = list(PERMANENT)
    while todo:
        cls = todo.pop(0)
        if cls.__name__ not in out:
            out.append(cls.__name__)
        todo += cls.__subclasses__()
    return out


#: PostgreSQL SQLSTATEs of a refused privilege / ownership (42501; ownership checks raise 42501 too)
_PG_DENIED = {"42501"}
#: MySQL / MariaDB: access denied for a table, column, database, command or routine; super needed
_MYSQL_DENIED = {1044, 1142, 1143, 1227, 1370}
#: MySQL / MariaDB: duplicate entry, not null, check constraint, data too long / out of range, bad value
_MYSQL_ROW = {1062, 1048, 3819, 4025, 1406, 1264, 1366, 1292}
#: foreign-key violations are left out: while tables are backfilled in parallel a child row can arrive
#: before its parent, and a retry succeeds once the parent is there
_PG_FOREIGN_KEY = "23503"


def _driver_error(exc: BaseException) -> BaseException:
    """The DBAPI error under SQLAlchemy's wrapper (``.orig``), or the error itself."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def _mysql_code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    if type(exc).__module__.split(".")[0] in ("MySQLdb", "pymysql") and args and isinstance(args[0], int):
        return args[0]
    return None


def is_permission_denied(exc: BaseException) -> bool:
    """A driver error saying the account may not do this (PostgreSQL 42501, MySQL access denied)."""
    exc = _driver_error(exc)
    return getattr(exc, "sqlstate", None) in _PG_DENIED or _mysql_code(exc) in _MYSQL_DENIED


def is_row_rejected(exc: BaseException) -> bool:
    """A driver error saying the target refused a row: PostgreSQL classes 22 (data) and 23 (integrity),
    MySQL's constraint and data errors, SQLite's IntegrityError."""
    exc = _driver_error(exc)
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    if sqlstate[:2] in ("22", "23"):
        return sqlstate != _PG_FOREIGN_KEY
    if _mysql_code(exc) in _MYSQL_ROW:
        return True
    return (type(exc).__module__ == "sqlite3" and type(exc).__name__ == "IntegrityError"
            and "FOREIGN KEY" not in str(exc))


#: MySQL / MariaDB client and server codes of a connection that failed or was lost (never a statement's
#: fault): can't connect, server gone away, lost connection (during a query, at handshake), too many
#: connections, server shutting down, connection killed, idle disconnect
_MYSQL_CONNECTION = {2002, 2003, 2005, 2006, 2013, 2014, 2055, 1040, 1053, 1927, 4031}
#: PostgreSQL SQLSTATE classes / codes of a connection or server problem that passes: 08 connection
#: exception, 53 insufficient resources (too many connections), 57 operator intervention (admin shutdown,
#: cannot connect now, a statement timeout under load)
_PG_CONNECTION_CLASSES = ("08", "53", "57")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the driver error under a SQLAlchemy wrapper (``.orig``), and every cause / context below."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        orig = getattr(e, "orig", None)
        todo += [orig if isinstance(orig, BaseException) else None, e.__cause__, e.__context__]


def _is_named(exc: BaseException, module: str, *names: str) -> bool:
    """An instance of a class called one of ``names`` from ``module`` (by name: no driver is imported here,
    this module is loaded in the workflow sandbox too)."""
    return any(cls.__module__.split(".")[0] == module and cls.__name__ in names for cls in type(exc).__mro__)


def _unavailable_one(exc: BaseException) -> bool:
    if isinstance(exc, StoreUnavailableError):
        return True
    if isinstance(exc, DualwriteError):
        return False  # any other error of ours says what it is
    if _is_named(exc, "sqlalchemy", "DisconnectionError") or getattr(exc, "connection_invalidated", False):
        return True
    if _is_named(exc, "redis", "ConnectionError", "TimeoutError"):
        return True
    if _is_named(exc, "pymysql", "OperationalError", "InterfaceError") or _is_named(
            exc, "MySQLdb", "OperationalError", "InterfaceError"):
        code = _mysql_code(exc)
        # InterfaceError: the connection object is closed or broken; OperationalError: only a connection code,
        # because PyMySQL raises OperationalError for any unmapped server error too (unknown column, denied)
        return _is_named(exc, type(exc).__module__.split(".")[0], "InterfaceError") or code in _MYSQL_CONNECTION
    if _is_named(exc, "psycopg", "OperationalError", "InterfaceError") or _is_named(
            exc, "psycopg2", "OperationalError", "InterfaceError"):
        sqlstate = str(getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None) or "")
        # no SQLSTATE: the client failed (refused, reset, closed); with one, only the passing classes
        return not sqlstate or sqlstate[:2] in _PG_CONNECTION_CLASSES
    return isinstance(exc, ConnectionError | TimeoutError)  # a socket refused, reset or timed out


def is_unavailable(exc: BaseException) -> bool:
    """A store that is down, refuses connections or lost the connection: retrying the same work shortly can
    succeed. True for :class:`StoreUnavailableError` and for driver-level connection errors (SQLAlchemy's
    ``DisconnectionError`` / invalidated connections, psycopg and PyMySQL connection failures, Redis
    ``ConnectionError`` / ``TimeoutError``, socket errors), raw or anywhere in the ``__cause__`` /
    ``__context__`` chain. Never for a rejected row, a refused privilege or a statement's own error: those
    are decided on the error itself, before its chain is looked at."""
    if is_row_rejected(exc) or is_permission_denied(exc) or isinstance(exc, PERMANENT):
        return False
    return any(_unavailable_one(e) for e in _chain(exc))


def raise_if(problems: Sequence[Problem], kind: type[ConfigError], headline: str) -> None:
    """Raise ``kind`` with all problems when there is at least one."""
    if problems:
        raise kind(problems, headline)
