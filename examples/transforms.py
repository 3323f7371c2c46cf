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


def full_name(row: dict[str, object]) -> str | None:
    """first_name + last_name of a whole source row, joined by a space (None when both are missing)."""
    parts = [str(p) for p in (row.get("first_name"), row.get("last_name")) if p]
    return " ".join(parts) or None


def first_word(name: str | None) -> str | None:
    """The reverse of :func:`full_name` for first_name."""
    return None if name is None else name.split(" ", 1)[0]


def other_words(name: str | None) -> str | None:
    """The reverse of :func:`full_name` for last_name (None when there was only one word)."""
    return None if name is None or " " not in name else name.split(" ", 1)[1]
