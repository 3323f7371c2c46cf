"""Strategy ``cdc`` in the spec: accepted, and refused with per-tenant tables (log capture cannot tell
dualwrite's own writes from the application's without denying whole tables)."""

from __future__ import annotations

from textwrap import dedent

import pytest

from dualwrite.errors import SpecError
from dualwrite.spec import Strategy, parse_spec


def test_cdc_is_a_strategy() -> None:
    spec = parse_spec(dedent("""
        name: m
        old: legacy
        new: modern
        strategy: cdc
        tables: [{source: orders}]
        """))
    assert spec.strategy is Strategy.CDC


def test_cdc_with_tenant_tables_is_refused_with_the_way_out() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(dedent("""
            name: m
            old: legacy
            new: modern
            strategy: cdc
            tenants: {column: tenant_id, ids: [a, b]}
            tables: [{source: orders}]
            """))
    assert "strategy cdc moves every table's authority as a whole" in str(err.value)
    assert "tenant_column: null on orders" in str(err.value)
