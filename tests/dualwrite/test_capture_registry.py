"""The capture-method registry agrees with the strategies a spec accepts and names the right key logs."""

import pytest

from dualwrite import outbox
from dualwrite.capture import METHODS, method_for
from dualwrite.spec import Strategy


def test_every_strategy_has_exactly_one_method() -> None:
    assert set(METHODS) == {s.value for s in Strategy}
    for s in Strategy:
        assert method_for(s).name == s.value
        assert method_for(s).inline is s.inline


def test_key_logs_are_the_tables_the_relay_drains() -> None:
    assert method_for(Strategy.OUTBOX).key_log == outbox.OUTBOX
    assert method_for(Strategy.TRIGGERS).key_log == outbox.CHANGELOG
    assert method_for(Strategy.CDC).key_log is None and method_for(Strategy.CDC).reads_database_log
    assert all(method_for(s).key_log is None for s in Strategy if s.inline)


def test_database_capture_is_exactly_the_methods_that_need_no_adapter() -> None:
    for m in METHODS.values():
        assert m.database_capture is (not m.through_adapter)


def test_unknown_strategy_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown write strategy 'dual'.*strict, sync, async"):
        method_for("dual")
