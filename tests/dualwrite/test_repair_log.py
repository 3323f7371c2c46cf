"""The repair's log line names the keys it rewrote - as short hashes, never the keys themselves (an e-mail
address is a key), unless the operator asks for them in clear."""

from __future__ import annotations

import logging

import pytest
from conftest import execute

from dualwrite.mapping import identity_mapping
from dualwrite.repair import key_hash, repair
from dualwrite.store import Store
from dualwrite.verify import verify_range

EMAIL = "ada.lovelace@example.com"


def _drifted(pg_old: Store, pg_new: Store, table: str) -> None:
    for store in (pg_old, pg_new):
        execute(store, f"CREATE TABLE {table} (email text PRIMARY KEY, name text)")
    execute(pg_old, f"INSERT INTO {table} VALUES ('{EMAIL}', 'Ada'), ('b@example.com', 'B')")
    execute(pg_new, f"INSERT INTO {table} VALUES ('b@example.com', 'B')")


@pytest.mark.parametrize("clear", [False, True])
def test_repaired_keys_are_logged_hashed_unless_asked(pg_old: Store, pg_new: Store, table_name: str, clear: bool,
                                                      caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _drifted(pg_old, pg_new, table_name)
    if clear:
        monkeypatch.setenv("DUALWRITE_LOG_KEYS", "1")
    mapping = identity_mapping(pg_old.describe(table_name), pg_new.describe(table_name))
    with caplog.at_level(logging.WARNING, logger="dualwrite"):
        result = repair(pg_old, pg_new, mapping, verify_range(pg_old, pg_new, mapping))
    assert result.after.ok and result.repaired_keys == 1
    text = "\n".join(r.getMessage() for r in caplog.records if "keys rewritten" in r.getMessage())
    assert "1 keys rewritten" in text
    assert (EMAIL in text) is clear
    assert (key_hash((EMAIL,)) in text) is not clear
