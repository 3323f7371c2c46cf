"""Python transforms for examples/orders.yaml.

A column mapped with ``{from: col, transform: "module:function"}`` calls the function with that source
column's value; without ``from`` it receives the whole source row as a dict. Transforms run in the worker
for every copied or mirrored row, so they must be pure and fast.
"""

from __future__ import annotations

from decimal import Decimal


def to_cents(amount: Decimal | None) -> int | None:
    """numeric(12,2) currency -> integer cents, exactly (no float on the way)."""
    return None if amount is None else int((amount * 100).to_integral_value())
