"""Error mapping: what an activity's failure looks like in Temporal.

A bad spec, a schema mismatch, an unknown store or a store that refuses for good is permanent and becomes a
non-retryable ``ApplicationError`` whose type is the dualwrite error class; an unreachable store is
retryable. Messages that reach history are redacted and cut to their first line, because database errors
append row images ("Failing row contains ...") in their detail lines (rules 6 and 7, docs/architecture.md).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from temporalio import activity
from temporalio.exceptions import ApplicationError

from dualwrite.config import redact
from dualwrite.errors import (
    ConfigError,
    DualwriteError,
    RowRejectedError,
    SlotBusyError,
    StorePermissionError,
    StoreUnavailableError,
    is_permanent,
    is_permission_denied,
    is_row_rejected,
    is_unavailable,
)
from dualwrite.store import is_transient, without_row_values

__all__ = ["classify", "mapped_errors", "safe_message", "to_application_error", "transient"]

log = logging.getLogger("dualwrite.activities")


def safe_message(exc: BaseException, limit: int = 400) -> str:
    """First line of an error, redacted and bounded: fit for history and logs."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def transient(exc: BaseException) -> bool:
    """Worth retrying the same round within the same activity attempt, after a short pause: a store that is
    down, refuses or lost connections (:func:`dualwrite.errors.is_unavailable`: :class:`StoreUnavailableError`
    and driver connection errors, raw or wrapped), a conflict between concurrent transactions (a deadlock),
    or a replication slot another session reads right now.

    A chaos proxy (or a failover) cuts a store for a second or two at a time; an activity that failed its
    attempt on each cut would wait out Temporal's growing backoff (tens of seconds) and, under repeated
    cuts, never finish. Constraint, data, permission and capture errors are never transient: they fail the
    attempt (permanent ones for good) at once."""
    if is_permanent(exc) or is_row_rejected(exc) or is_permission_denied(exc):
        return False
    if isinstance(exc, SlotBusyError) or is_unavailable(exc):
        return True
    orig = getattr(exc, "orig", None)
    return is_transient(exc) or (isinstance(orig, BaseException) and is_transient(orig))


def classify(exc: BaseException) -> BaseException:
    """A driver error that no retry can fix, as the dualwrite error that says so (others unchanged).

    A refused privilege or ownership (``must be owner of table ...``) becomes :class:`StorePermissionError`;
    a row the target rejects (unique violation, bad value) :class:`RowRejectedError`, without the values."""
    if isinstance(exc, DualwriteError):
        return exc
    if is_permission_denied(exc):
        return StorePermissionError(f"permission denied: {safe_message(exc)}; grant it (or run the worker "
                                    "as the owner), then retry")
    if is_row_rejected(exc):
        clean = without_row_values(getattr(exc, "orig", None) or exc, "writing the target")
        return clean if isinstance(clean, DualwriteError) else RowRejectedError(
            f"writing the target: the target rejected a row ({type(exc).__name__}); values are not shown")
    return exc


def to_application_error(exc: BaseException) -> ApplicationError:
    """Map a dualwrite (or driver) error to the ApplicationError Temporal records.

    Permanent errors (:data:`dualwrite.errors.PERMANENT` and below) are non-retryable, so the phase work
    fails at once with the reason in status and history; everything else (an unreachable store, a
    deadlock) is retried with backoff."""
    if isinstance(exc, ApplicationError):
        return exc
    exc = classify(exc)
    if isinstance(exc, ConfigError):
        # every problem, one per line: names of tables / columns / stores, never a URL or row value
        return ApplicationError(redact(str(exc))[:4000], type=type(exc).__name__, non_retryable=True)
    if isinstance(exc, StoreUnavailableError):
        return ApplicationError(safe_message(exc), type="StoreUnavailable")
    if isinstance(exc, DualwriteError):
        return ApplicationError(safe_message(exc), type=type(exc).__name__, non_retryable=is_permanent(exc))
    return ApplicationError(f"{type(exc).__name__}: {safe_message(exc)}", type=type(exc).__name__)


@contextmanager
def mapped_errors() -> Iterator[None]:
    """Re-raise anything as a mapped ApplicationError *without* its cause chain (which may hold rows)."""
    try:
        yield
    except ApplicationError:
        raise
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        if type(exc).__name__ == "CancelledError":
            raise
        mapped = to_application_error(exc)
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
        log.warning("activity %s failed%s: %s", activity.info().activity_type, where, mapped.message)
        raise mapped from None
