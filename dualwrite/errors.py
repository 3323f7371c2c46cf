"""The one exception hierarchy of dualwrite.

Everything dualwrite raises on purpose derives from :class:`DualwriteError`, so an application or an
operator script can catch the whole family with one ``except``. Configuration and schema problems are
collected, never raised one at a time: :class:`ConfigError` carries every :class:`Problem` found, each
with the place it was found, because fixing a spec one error per run is a miserable way to spend a day.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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


class IllegalTransitionError(DualwriteError):
    """A phase transition that the phase machine forbids (skipping, leaving CLEANUP, while paused...)."""


class WriteFencedError(DualwriteError):
    """A write waited for a write fence (authority moving between the stores) longer than the adapter's
    ``fence_max_wait``, or was routed before the authority moved: nothing was written; retry the request."""


class VerificationError(DualwriteError):
    """A verification could not prove anything: it compared zero rows or skipped a chunk."""


def raise_if(problems: Sequence[Problem], kind: type[ConfigError], headline: str) -> None:
    """Raise ``kind`` with all problems when there is at least one."""
    if problems:
        raise kind(problems, headline)
