"""Resolve store names to connection URLs, and keep URLs out of everything that is shown.

A spec names stores; the worker and the CLI resolve each name here, from the environment variable
``DUALWRITE_STORE_<NAME>`` or from a local config file (``DUALWRITE_CONFIG``, else ``./dualwrite.yaml``):

    stores:
      legacy: postgresql://app:secret@db1/app
      modern: postgresql://app:secret@db2/app

Only this module and :mod:`dualwrite.store` ever hold a URL; everything else gets a :class:`StoreRef`
whose ``str()`` is redacted.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dualwrite.errors import Problem, UnknownStoreError

ENV_PREFIX = "DUALWRITE_STORE_"
CONFIG_ENV = "DUALWRITE_CONFIG"
DEFAULT_CONFIG = "dualwrite.yaml"

_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mariadb+mysqldb": "mysql+mysqldb",
    "mariadb+pymysql": "mysql+pymysql",
}
_MYSQL_SCHEMES = ("mysql", "mariadb")

MYSQL_DRIVER_HINT = ("no MySQL/MariaDB driver is installed: pip install PyMySQL (pure Python, the default), "
                     "or pip install 'dualwrite[mysqlclient]' for the faster C driver (needs libmariadb-dev)")


def mysql_driver() -> str | None:
    """The MySQL/MariaDB DBAPI driver to use: mysqlclient when it is importable (faster), else PyMySQL (pure
    Python, installed by default), else None."""
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec("MySQLdb") is not None:
        return "mysqldb"
    if importlib.util.find_spec("pymysql") is not None:
        return "pymysql"
    return None


# The password runs to the *last* '@' before the path: a raw password may hold '@' and spaces
# (``postgresql://u:p@ss w@rd@host/db``), and cutting at its first '@' would print the rest of it. Where no
# path follows, this may redact more than the password; never less.
_PASSWORD_RE = re.compile(r"(?P<pre>://[^:/@\s]*:)(?P<pw>[^/\n]*)(?P<post>@)")
_QUERY_SECRET_RE = re.compile(
    r"(?i)(?P<k>(password|passwd|pwd|secret|token)=)(?P<v>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^&\s]+)")


def redact(text: str) -> str:
    """Replace passwords in URLs (and ``password=`` query or DSN parts, quoted or not) in any text with
    ``***``, whole, whatever characters they hold."""
    text = _PASSWORD_RE.sub(r"\g<pre>***\g<post>", text)
    return _QUERY_SECRET_RE.sub(r"\g<k>***", text)


_URL_UNSAFE_IN_PASSWORD = set("@ /?#[]")


def _quote_raw_password(rest: str) -> str:
    """``user:p@ss w@rd@host/db`` -> ``user:p%40ss%20w%40rd@host/db``: a raw password is percent-encoded
    once, so the driver parses the host and the password right (and no fragment of the password ends up
    as a host name in an error message). An already encoded password is left as it is."""
    head = rest.split("?", 1)[0]
    at = head.rfind("@")
    if at < 0:
        return rest
    userinfo, tail = rest[:at], rest[at:]
    user, sep, password = userinfo.partition(":")
    if not sep or not (_URL_UNSAFE_IN_PASSWORD & set(password)):
        return rest
    return f"{user}:{urllib.parse.quote(password, safe='')}{tail}"


def env_var_for(name: str) -> str:
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def normalise_url(url: str) -> str:
    """Pick our DBAPI driver for bare scheme names: psycopg 3; for ``mysql://`` and ``mariadb://`` whichever
    of mysqlclient and PyMySQL is installed (:func:`mysql_driver`)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    driver = _DRIVERS.get(scheme.lower(), scheme)
    if scheme.lower() in _MYSQL_SCHEMES:
        driver = f"mysql+{mysql_driver() or 'pymysql'}"
    return f"{driver}://{_quote_raw_password(rest)}"


@dataclass(frozen=True)
class StoreRef:
    """A resolved store: its name and URL. The URL is never part of ``repr`` or ``str``."""

    name: str
    url: str = field(repr=False)

    def __str__(self) -> str:
        return f"{self.name} ({redact(self.url)})"

    @property
    def redacted_url(self) -> str:
        return redact(self.url)


def _config_path(explicit: str | Path | None) -> Path | None:
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    local = Path(DEFAULT_CONFIG)
    return local if local.exists() else None


def _config_stores(path: Path | None) -> tuple[dict[str, str], list[Problem]]:
    if path is None:
        return {}, []
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        return {}, [Problem(str(path), f"cannot read the config file: {exc.strerror}")]
    except yaml.YAMLError as exc:
        # never str(exc): PyYAML quotes the offending line, and in this file that line may hold a password
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        return {}, [Problem(where, f"not valid YAML: {getattr(exc, 'problem', None) or type(exc).__name__}")]
    stores = doc.get("stores", {}) if isinstance(doc, dict) else None
    if not isinstance(stores, dict) or not all(isinstance(v, str) for v in stores.values()):
        return {}, [Problem(f"{path} stores", "expected a mapping of store name to URL")]
    return {str(k): v for k, v in stores.items()}, []


class StoreResolver:
    """Turns store names into :class:`StoreRef`; the environment wins over the config file."""

    def __init__(self, config_file: str | Path | None = None, environ: dict[str, str] | None = None) -> None:
        self._environ = dict(os.environ if environ is None else environ)
        self._path = _config_path(config_file)
        self._file_stores, self._file_problems = _config_stores(self._path)

    @property
    def config_path(self) -> Path | None:
        """The config file in use (explicit, ``$DUALWRITE_CONFIG`` or ``./dualwrite.yaml``), if any."""
        return self._path

    @property
    def file_problems(self) -> list[Problem]:
        """Why the config file could not be used (unreadable, not YAML, bad ``stores:``); empty when fine.

        ``dualwrite check`` reports these even when every store resolves from the environment, because
        an operator who passed ``--config`` expects that file to be the one read.
        """
        return list(self._file_problems)

    def try_resolve(self, name: str) -> tuple[StoreRef | None, list[Problem]]:
        var = env_var_for(name)
        if var in self._environ and self._environ[var]:
            return StoreRef(name, normalise_url(self._environ[var])), []
        if name in self._file_stores:
            return StoreRef(name, normalise_url(self._file_stores[name])), []
        where = f"store {name!r}"
        hint = f"set {var}" + (f" or add it under 'stores:' in {self._path}" if self._path else
                               f" or add it under 'stores:' in ./{DEFAULT_CONFIG} (or the file in ${CONFIG_ENV})")
        return None, [*self._file_problems, Problem(where, f"no URL for this store: {hint}")]

    def resolve(self, name: str) -> StoreRef:
        ref, problems = self.try_resolve(name)
        if ref is None:
            raise UnknownStoreError(problems, "unknown store")
        return ref

    def resolve_all(self, *names: str) -> list[StoreRef]:
        refs: list[StoreRef] = []
        problems: list[Problem] = []
        for n in names:
            ref, found = self.try_resolve(n)
            problems += [p for p in found if p not in problems]
            if ref is not None:
                refs.append(ref)
        if problems:
            raise UnknownStoreError(problems, "unknown store")
        return refs
