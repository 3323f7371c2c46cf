"""Redis as a store, the parts that need no migration: value encoding, key templates, authority checks.

Real Redis servers: the machine's shared one (keeps nothing on disk) and private ones started here."""

from __future__ import annotations

import datetime as dt
import decimal
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from dualwrite.canonical import canonical_value
from dualwrite.errors import RowRejectedError, ServerStartError, SpecError
from dualwrite.keyvalue import KeyTemplate, ValueCodec, authority_problems, decode_value, encode_value, read_facts
from dualwrite.keyvalue.encoding import column_encoder
from dualwrite.keyvalue.redis_server import start_redis
from dualwrite.store import Kind

SHARED_REDIS = os.environ.get("DUALWRITE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

VALUES: list[tuple[Kind, Any, int | None]] = [
    (Kind.INT, -42, None), (Kind.INT, 2**62, None), (Kind.BOOL, True, None), (Kind.BOOL, 0, None),
    (Kind.DECIMAL, decimal.Decimal("12.3"), 2), (Kind.DECIMAL, decimal.Decimal("-0.005"), 2),
    (Kind.DECIMAL, decimal.Decimal("123456789012345678901234567890.123456789"), None),
    (Kind.FLOAT, 0.1, None), (Kind.FLOAT, float("nan"), None), (Kind.FLOAT, float("-inf"), None),
    (Kind.TEXT, "zoë 🚀 a:b%c", None), (Kind.TEXT, "", None), (Kind.BYTES, b"\x00\xff:%", None),
    (Kind.DATE, dt.date(1999, 12, 31), None), (Kind.TIME, dt.time(23, 59, 59, 5), None),
    (Kind.TIMESTAMP, dt.datetime(2026, 3, 29, 1, 30, 0, 123456), None),
    (Kind.TIMESTAMPTZ, dt.datetime(2026, 3, 29, 3, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))), None),
    (Kind.JSON, {"b": [1.0, 2.5], "a": None}, None), (Kind.UUID, uuid.UUID(int=7), None),
]


@pytest.mark.parametrize(("kind", "value", "scale"), VALUES, ids=[f"{k.value}-{i}" for i, (k, _, _) in
                                                                   enumerate(VALUES)])
def test_every_kind_reads_back_as_the_canonical_value_verification_compares(kind: Kind, value: Any,
                                                                            scale: int | None) -> None:
    text = encode_value(value, kind, scale)
    assert isinstance(text, str)
    assert decode_value(text.encode(), kind, scale) == canonical_value(value, kind, scale)


def test_spellings_of_one_value_are_one_text() -> None:
    """MariaDB's 1, PostgreSQL's True; a tz-aware instant and its UTC twin; 12.3 and 12.30 at scale 2."""
    assert encode_value(1, Kind.BOOL) == encode_value(True, Kind.BOOL) == "true"
    paris = dt.datetime(2026, 1, 1, 13, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert encode_value(paris, Kind.TIMESTAMPTZ) == encode_value("2026-01-01 12:00:00+00", Kind.TIMESTAMPTZ) \
        == "2026-01-01T12:00:00.000000+00:00"
    assert encode_value(decimal.Decimal("12.3"), Kind.DECIMAL, 2) == encode_value("12.30", Kind.DECIMAL, 2) == "12.30"
    assert encode_value({"a": 1, "b": 2}, Kind.JSON) == encode_value('{"b": 2, "a": 1.0}', Kind.JSON)


SPELLINGS: list[tuple[Kind, Any, int | None]] = [
    *VALUES, (Kind.INT, True, None), (Kind.INT, "17", None), (Kind.BOOL, 1, None), (Kind.BOOL, "t", None),
    (Kind.TEXT, b"bytes", None), (Kind.TEXT, uuid.UUID(int=3), None), (Kind.DECIMAL, decimal.Decimal("NaN"), 2),
    (Kind.DECIMAL, decimal.Decimal("-0.001"), 2), (Kind.DECIMAL, 1.005, 2), (Kind.DECIMAL, "12.345", 2),
    (Kind.TIMESTAMP, dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC), None), (Kind.TIMESTAMP, "2026-01-01 12:00", None),
    (Kind.TIMESTAMPTZ, dt.datetime(2026, 1, 1, 12), None), (Kind.TIMESTAMPTZ, dt.date(2026, 1, 1), None),
    (Kind.TIMESTAMPTZ, dt.datetime(1, 1, 1, 0, 0, 1, tzinfo=dt.timezone(dt.timedelta(hours=-1))), None),
]


@pytest.mark.parametrize(("kind", "value", "scale"), SPELLINGS)
def test_column_encoders_write_the_text_of_encode_value(kind: Kind, value: Any, scale: int | None) -> None:
    """The per-column fast paths the backfill writes through give exactly encode_value's text."""
    assert column_encoder(kind, scale)(value) == encode_value(value, kind, scale)


@settings(max_examples=200, deadline=None)
@given(st.integers(), st.text(), st.decimals(allow_nan=False, allow_infinity=False, places=4),
       st.datetimes(timezones=st.one_of(st.none(), st.timezones())), st.booleans())
def test_column_encoders_agree_with_encode_value_on_any_row(i: int, t: str, d: decimal.Decimal, ts: dt.datetime,
                                                            b: bool) -> None:
    codec = ValueCodec(columns=("i", "t", "d", "ts", "tz", "b"), scales=(None, None, 2, None, None, None),
                       kinds=(Kind.INT, Kind.TEXT, Kind.DECIMAL, Kind.TIMESTAMP, Kind.TIMESTAMPTZ, Kind.BOOL))
    row = (i, t, d, ts, ts, b)
    try:
        expected = {c: encode_value(v, k, s) for c, v, k, s in zip(codec.columns, row, codec.kinds, codec.scales,
                                                                    strict=True)}
    except OverflowError:  # an instant that cannot be moved to UTC: both paths refuse it
        with pytest.raises(OverflowError):
            codec.pairs(row)
        return
    assert codec.fields(row) == expected
    assert codec.pairs(row) == [x for kv in expected.items() for x in kv]


def test_null_is_an_absent_field_and_reads_back_as_null() -> None:
    codec = ValueCodec(columns=("id", "note", "amount"), kinds=(Kind.INT, Kind.TEXT, Kind.DECIMAL),
                       scales=(None, None, 2))
    fields = codec.fields((7, None, decimal.Decimal("1.5")))
    assert fields == {"id": "7", "amount": "1.50"}
    assert codec.canonical_row({b"id": b"7", b"amount": b"1.50"}) == (7, None, "1.50")


def test_a_bytes_field_nobody_base64_encoded_differs_instead_of_crashing() -> None:
    assert decode_value("not base64!", Kind.BYTES) == "not base64!"
    assert decode_value("not base64!", Kind.BYTES) != b"not base64!"


@settings(max_examples=300, deadline=None)
@given(st.text(), st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_any_composite_key_parses_back(tenant: str, ident: int) -> None:
    tpl = KeyTemplate.parse("order:{tenant}:{id}", ["tenant", "id"], [Kind.TEXT, Kind.INT], prefix="m1:")
    key = tpl.key([ident, tenant], ["id", "tenant"])
    assert key.startswith("m1:order:")
    assert tpl.values(key, ["tenant", "id"]) == (tenant, ident)
    assert tpl.values(key.encode(), ["id", "tenant"]) == (ident, tenant)


def test_keys_of_other_tables_are_not_this_tables() -> None:
    tpl = KeyTemplate.parse("customer:{id}", ["id"], [Kind.UUID])
    assert tpl.values("invoice:1", ["id"]) is None
    u = uuid.uuid4()
    assert tpl.values(tpl.key([u], ["id"]), ["id"]) == (str(u),)
    assert tpl.scan_pattern() == "customer:*"
    assert KeyTemplate.parse("a*[x]:{id}", ["id"], [Kind.INT]).scan_pattern() == r"a\*\[x\]:*"


def test_a_bad_template_names_every_problem_at_once() -> None:
    with pytest.raises(SpecError) as err:
        KeyTemplate.parse("c:{id}{idd}:{id!r}", ["id", "region"], [Kind.INT, Kind.TEXT], where="spec.yaml:9")
    msg = str(err.value)
    for part in ("spec.yaml:9", "idd is not a key column", "region missing", "id used more than once",
                 "no separator", "format or conversion"):
        assert part in msg


def test_a_null_key_value_is_refused() -> None:
    tpl = KeyTemplate.parse("c:{id}", ["id"], [Kind.INT])
    with pytest.raises(RowRejectedError, match="NULL"):
        tpl.key([None], ["id"])


def test_the_shared_redis_that_keeps_nothing_on_disk_may_not_become_authoritative() -> None:
    client = redis.Redis.from_url(SHARED_REDIS)
    facts = read_facts(client)
    problems = [str(p) for p in authority_problems(facts, "new")]
    assert not facts.persistent
    assert any("keeps nothing on disk" in p and "appendonly yes" in p for p in problems)


def test_a_private_redis_with_persistence_may_and_an_evicting_one_may_not(tmp_path: Path) -> None:
    with start_redis(tmp_path / "r") as server:
        client = redis.Redis.from_url(server.url)
        assert authority_problems(read_facts(client), "new") == []
        client.config_set("maxmemory", str(1 << 20))
        client.config_set("maxmemory-policy", "allkeys-lru")
        problems = [str(p) for p in authority_problems(read_facts(client), "new", needed_bytes=64 << 20)]
        assert any("allkeys-lru evicts keys" in p and "noeviction" in p for p in problems)
        assert any("raise `maxmemory`" in p for p in problems)
        client.set("k", "v")
    with start_redis(tmp_path / "r") as again:  # the append-only file brings the data back
        assert redis.Redis.from_url(again.url).get("k") == b"v"


def test_without_redis_server_the_error_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerStartError, match="install the redis-server package"):
        start_redis(tmp_path / "r")
