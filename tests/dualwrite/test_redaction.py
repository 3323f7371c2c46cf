"""A password with '@', spaces or quotes is redacted whole wherever a URL or DSN is shown, and the URL
still reaches the right server.

``postgresql://u:p@ss w@rd@host/db`` used to come out as ``postgresql://u:***@ss w@rd@host/db``: the
password cut at its first '@' and the rest printed. Both spellings an operator may write are covered:
raw, and percent-encoded as RFC 3986 wants it.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import PG_HOST, PG_PORT, PG_USER
from typer.testing import CliRunner

from dualwrite import logs
from dualwrite.config import StoreRef, StoreResolver, normalise_url, redact
from dualwrite.store import Store
from starter.cli import _register, app

_register()

RAW = "p@ss w@rd"
PIECES = ("p@ss", "ss w", "w@rd", "@rd", "%40ss", "w%40rd")


def assert_hidden(text: str) -> None:
    for piece in PIECES:
        assert piece not in text, f"{piece!r} leaked in {text!r}"


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:p@ss w@rd@db.example:5432/app", "postgresql://u:***@db.example:5432/app"),
    ("postgresql://u:p%40ss%20w%40rd@db.example:5432/app", "postgresql://u:***@db.example:5432/app"),
    ("mysql://u:p@ss w@rd@db.example/app?charset=utf8mb4", "mysql://u:***@db.example/app?charset=utf8mb4"),
    ("postgresql://u:p@ss w@rd@db.example", "postgresql://u:***@db.example"),
])
def test_urls_are_redacted_whole(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert redact(f"cannot connect to {url}: refused") == f"cannot connect to {shown}: refused"
    ref = StoreRef("legacy", normalise_url(url))
    assert_hidden(str(ref))
    assert_hidden(repr(ref))
    assert "***@db.example" in ref.redacted_url


def test_dsn_passwords_are_redacted_whole() -> None:
    assert redact("host=db password='p@ss w@rd' user=u") == "host=db password=*** user=u"
    assert redact('host=db password="p@ss w@rd" user=u') == "host=db password=*** user=u"
    assert redact("host=db password=plain user=u") == "host=db password=*** user=u"


def test_a_raw_password_still_reaches_the_right_server() -> None:
    """The raw spelling is percent-encoded once, so the driver gets the host and the password right
    (PostgreSQL trusts local connections here: a misparsed host is what would fail)."""
    user = PG_USER or "root"
    store = Store(StoreRef("raw", normalise_url(f"postgresql://{user}:{RAW}@{PG_HOST}:{PG_PORT}/postgres")))
    try:
        with store.connect() as conn:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            assert cur.fetchone()[0] == 1
    finally:
        store.dispose()


def test_json_logs_redact_a_password_with_at_signs_and_spaces() -> None:
    stream = io.StringIO()
    handler = logs.configure(json_logs=True, level="INFO", stream=stream)
    try:
        for url in (f"postgresql://app:{RAW}@db:5432/app", "postgresql://app:p%40ss%20w%40rd@db:5432/app"):
            logging.getLogger("dualwrite.test").warning("cannot connect to %s", url)
            logs.get_logger("dualwrite.test").info("store", url=url, nested={"dsn": f"host=db password='{RAW}'"})
            try:
                raise RuntimeError(f"connection to {url} refused")
            except RuntimeError:
                logging.getLogger("dualwrite.test").exception("failed")
    finally:
        logging.getLogger().removeHandler(handler)
        structlog.reset_defaults()
    out = stream.getvalue()
    assert_hidden(out)
    events: list[dict[str, Any]] = [json.loads(line) for line in out.splitlines()]
    assert events[1]["url"] == "postgresql://app:***@db:5432/app"


def test_check_never_prints_such_a_password(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: m\nold: gone\nnew: other\ntables: [{source: t}]\n")
    env = {"DUALWRITE_CONFIG": "", "DUALWRITE_TEMPORAL_ADDRESS": "127.0.0.1:1",
           "DUALWRITE_STORE_GONE": f"postgresql://app:{RAW}@127.0.0.1:1/app",
           "DUALWRITE_STORE_OTHER": "postgresql://app:p%40ss%20w%40rd@127.0.0.1:1/app"}
    for extra in ([], ["--json"]):
        result = CliRunner().invoke(app, ["check", str(spec), *extra], env=env)
        assert result.exit_code == 2, result.output
        assert_hidden(result.output)
        assert "app:***@127.0.0.1:1/app" in result.output
    assert StoreResolver(environ=env).resolve("gone").redacted_url.endswith("app:***@127.0.0.1:1/app")
