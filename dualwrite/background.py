"""The two helper threads of a copy: reading the next chunk ahead, and checking the previous one.

Each thread owns the connections it uses, opened and closed inside it, so no DBAPI connection is ever
shared between threads. Both are context managers: leaving the ``with`` block stops the thread and
waits for it, also when the copy fails half-way.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Generic, TypeVar

from dualwrite import keycheck
from dualwrite.mapping import TableMapping
from dualwrite.mirror import MirrorResult
from dualwrite.store import Store
from dualwrite.stores import Key, kind_for

T = TypeVar("T")

#: attempts of one key check when a repair meets a deadlock
CHECK_ATTEMPTS = 5


class ReadAhead(Generic[T]):
    """Runs an iterator in a thread, ``depth`` items ahead of the consumer.

    The iterator is created, advanced and closed inside the thread. Errors surface in the consumer at
    the item where they happened.
    """

    def __init__(self, make: Callable[[], Iterator[T]], depth: int = 1) -> None:
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._run, args=(make,), name="dualwrite-read-ahead", daemon=True)
        self._thread.start()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, make: Callable[[], Iterator[T]]) -> None:
        try:
            it = make()
            try:
                for item in it:
                    if not self._put(("item", item)):
                        return
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
            self._put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(("error", exc))

    def __iter__(self) -> Iterator[T]:
        """The items, then the end (or the error) once; iterated again after that, or after :meth:`close`,
        it ends at once instead of waiting for a marker nobody will put again."""
        while not self._finished:
            try:
                kind, value = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set() or not self._thread.is_alive():
                    self._finished = self._queue.empty()
                continue
            if kind == "end":
                self._finished = True
                return
            if kind == "error":
                self._finished = True
                raise value
            yield value

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class KeyChecker:
    """Settles the key set of committed chunks (see :func:`keycheck.settle_range`) in one thread.

    One check runs at a time, in submission order, on the thread's own source and target connections.
    """

    def __init__(self, source: Store, target: Store, mapping: TableMapping) -> None:
        self.source, self.target, self.mapping = source, target, mapping
        self._skind, self._tkind = kind_for(source), kind_for(target)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dualwrite-key-check")
        self._conns: contextlib.ExitStack | None = None
        self._sconn: Any = None
        self._tconn: Any = None

    def _check(self, lo: Key | None, hi: Key | None, written: Sequence[Key] | None) -> MirrorResult:
        if self._conns is None:
            self._conns = contextlib.ExitStack()
            self._sconn = self._conns.enter_context(self._skind.connect(self.source))
            self._tconn = self._conns.enter_context(self._tkind.connect(self.target))
        for attempt in range(CHECK_ATTEMPTS):
            try:
                return keycheck.settle_range(self.source, self.target, self.mapping, self._sconn, self._tconn,
                                             lo, hi, written)
            except Exception as exc:
                transient = self._skind.is_transient(exc) or self._tkind.is_transient(exc)
                if not transient or attempt == CHECK_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def submit(self, lo: Key | None, hi: Key | None, written: Sequence[Key] | None = None) -> Future[MirrorResult]:
        """Check a committed chunk; ``written``: the keys it wrote (see :func:`keycheck.settle_range`)."""
        return self._pool.submit(self._check, lo, hi, written)

    def _close_conns(self) -> None:
        if self._conns is not None:
            self._conns.close()
            self._conns = None

    def close(self) -> None:
        """Wait for the check in flight (its result is dropped), then release the connections."""
        with contextlib.suppress(Exception):
            self._pool.submit(self._close_conns).result()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> KeyChecker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
