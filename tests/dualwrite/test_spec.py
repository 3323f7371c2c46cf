"""The migration spec: parsing, defaults, shorthands, and errors that name the line the operator edits.

Pure parsing, no database: what matters is that a spec means what it says and that every mistake in
it is reported at once, at the right line.
"""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from dualwrite.errors import SpecError
from dualwrite.spec import Mode, Strategy, load_spec, parse_spec, read_spec_text


def spec_text(body: str) -> str:
    return dedent(body).lstrip("\n")


def problems_of(text: str, source: str = "spec.yaml") -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_spec(spec_text(text), source)
    return [str(p) for p in err.value.problems]


MINIMAL = """
    name: orders-move
    old: legacy
    new: modern
    tables:
      - source: orders
    """


def test_minimal_spec_gets_the_documented_defaults() -> None:
    spec = parse_spec(spec_text(MINIMAL))
    assert (spec.name, spec.old, spec.new) == ("orders-move", "legacy", "modern")
    assert spec.strategy is Strategy.SYNC and spec.mode is Mode.MANUAL
    assert spec.control == "legacy"  # control tables live in the old store unless named
    assert spec.backfill_concurrency == 4 and spec.verify_interval_seconds == 0 and not spec.auto_cleanup
    assert spec.gates.shadow_match_rate == 0.999 and spec.gates.secondary_write_success_rate == 0.9995
    table = spec.table("orders")
    assert table.target is None and table.target_table == "orders"
    assert table.key is None  # the primary key, found at preflight
    assert table.columns == {} and table.drop == [] and table.version_column is None
    assert table.batch_size == 50_000


def test_column_mappings_shorthand_rename_expr_default_and_transform() -> None:
    spec = parse_spec(spec_text("""
        name: m
        old: legacy
        new: modern
        tables:
          - source: orders
            target: orders_v2
            key: [id]
            version_column: version
            batch_size: 500
            columns:
              total: amount
              full_name: {expr: "first_name || ' ' || last_name"}
              region: {default: eu}
              archived: {default: null}
              cents: {from: amount, transform: "examples.transforms:to_cents"}
              whole: {transform: "pkg.mod.fn"}
            drop: [legacy_flag]
        """))
    t = spec.tables[0]
    assert t.target_table == "orders_v2" and t.key == ["id"] and t.batch_size == 500
    cols = t.columns
    assert cols["total"].from_ == "amount" and cols["total"].expr is None and not cols["total"].has_default
    assert cols["full_name"].expr == "first_name || ' ' || last_name" and cols["full_name"].from_ is None
    assert cols["region"].has_default and cols["region"].default == "eu"
    # an explicit null is a default (a new nullable column), not a missing mapping
    assert cols["archived"].has_default and cols["archived"].default is None
    assert cols["cents"].from_ == "amount" and cols["cents"].transform == "examples.transforms:to_cents"
    assert cols["whole"].from_ is None and cols["whole"].transform == "pkg.mod.fn"
    assert t.drop == ["legacy_flag"]


def test_every_problem_is_reported_at_its_line_in_one_error() -> None:
    found = problems_of("""
        name: m
        old: legacy
        new: legacy
        stratgy: sync
        tables:
          - source: orders
            columns:
              total: {from: amount, expr: "amount * 2"}
              cents: {transform: "not a path"}
          - source: items
            batch_size: 0
        gates:
          shadow_match_rat: 0.9
        """)
    assert found == [
        "spec.yaml:3 new: old and new name the same store 'legacy'",
        "spec.yaml:4 stratgy: unknown field (did you mean 'strategy'?)",
        "spec.yaml:8 tables[0].columns.total: give exactly one of from / expr / default / transform "
        "(got ['from', 'expr'])",
        "spec.yaml:9 tables[0].columns.cents: transform 'not a path' must look like 'package.module:function'",
        "spec.yaml:11 tables[1].batch_size: Input should be greater than or equal to 1",
        "spec.yaml:13 gates.shadow_match_rat: unknown field (did you mean 'shadow_match_rate'?)",
    ]


def test_cross_field_rules_alone_still_fail_and_name_the_second_writer() -> None:
    found = problems_of("""
        name: m
        old: legacy
        new: modern
        tables:
          - source: orders
          - source: orders_archive
            target: orders
        """)
    assert found == ["spec.yaml:7 tables[1].target: target table orders is already written by tables[0]"]


def test_store_names_not_urls() -> None:
    found = problems_of("""
        name: m
        old: postgresql://app:secret@db/app
        new: modern
        tables: [{source: orders}]
        """)
    assert len(found) == 1
    assert found[0].startswith("spec.yaml:2 old: name a store, not a URL")


def test_unknown_fields_suggest_the_field_meant_at_their_level() -> None:
    found = problems_of("""
        name: m
        old: legacy
        new: modern
        tables:
          - source: orders
            colums: {total: amount}
            columns:
              total: {form: amount}
        """)
    assert found == [
        "spec.yaml:6 tables[0].colums: unknown field (did you mean 'columns'?)",
        "spec.yaml:8 tables[0].columns.total.form: unknown field (did you mean 'from'?)",
    ]


def test_bad_names_and_lists() -> None:
    found = problems_of("""
        name: 9lives
        old: legacy
        new: modern
        tables:
          - source: "orders; drop table x"
            key: [id, id]
            drop: ["bad name"]
        """)
    assert found == [
        "spec.yaml:1 name: use letters, digits, '_', '-' or '.', starting with a letter (at most 63)",
        "spec.yaml:5 tables[0].source: 'orders; drop table x' is not a table name (use schema.table or table)",
        "spec.yaml:6 tables[0].key: columns are listed twice",
        "spec.yaml:7 tables[0].drop: 'bad name' is not a column name",
    ]


def test_an_expression_is_one_expression() -> None:
    found = problems_of("""
        name: m
        old: legacy
        new: modern
        tables:
          - source: orders
            columns:
              note: {expr: "1; DELETE FROM orders"}
        """)
    assert found == ["spec.yaml:7 tables[0].columns.note: an expression must not contain ';' "
                     "(one SQL expression, not statements)"]
    # a ';' inside a string literal is just text
    spec = parse_spec(spec_text("""
        name: m
        old: legacy
        new: modern
        tables:
          - source: orders
            columns:
              note: {expr: "concat(a, ';', b)"}
        """))
    assert spec.tables[0].columns["note"].expr == "concat(a, ';', b)"


def test_missing_required_fields_and_empty_tables() -> None:
    found = problems_of("""
        name: m
        tables: []
        """)
    assert found == [
        "spec.yaml:1 old: Field required",
        "spec.yaml:1 new: Field required",
        "spec.yaml:2 tables: List should have at least 1 item after validation, not 0",
    ]


def test_yaml_syntax_errors_and_non_mappings() -> None:
    assert problems_of("name: m\nold: [legacy\nnew: modern\n")[0].startswith("spec.yaml:3: not valid YAML")
    assert problems_of("- just\n- a list\n") == ["spec.yaml: the spec must be a YAML mapping"]


def test_lenient_reading_keeps_what_validated() -> None:
    doc = read_spec_text(spec_text("""
        name: m
        old: legacy
        new: Not A Store
        tables:
          - source: orders
          - source: items
            batch_sise: 10
          - target: lonely
        """), "s.yaml")
    assert doc.spec is None
    assert doc.stores == {"old": "legacy"}
    assert [(i, t.source) for i, t in doc.tables] == [(0, "orders")]
    assert doc.broken_tables == [(1, "items", "items"), (2, None, "lonely")]
    assert [p.where for p in doc.problems] == ["s.yaml:3 new", "s.yaml:7 tables[1].batch_sise",
                                               "s.yaml:8 tables[2].source"]
    assert doc.where(("tables", 1, "columns", "x")) == "s.yaml:6 tables[1].columns.x"  # nearest line known


def test_load_spec_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "orders.yaml"
    path.write_text(spec_text(MINIMAL).replace("new: modern", "new: modern\nbatch: 1"), encoding="utf-8")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert [str(p) for p in err.value.problems] == [
        "orders.yaml:4 batch: unknown field; expected one of: name, old, new, control_store, strategy, mode, "
        "tables, backfill_concurrency, verify_interval_seconds, auto_cleanup, gates, rollback_triggers, "
        "tenants"]
    with pytest.raises(SpecError) as err:
        load_spec(tmp_path / "absent.yaml")
    assert "cannot read the spec" in str(err.value)


def test_the_example_spec_parses(repo_root: Path) -> None:
    spec = load_spec(repo_root / "examples" / "orders.yaml")
    assert spec.tables[0].target_table == "orders_v2"


def test_reverse_rules_a_bare_string_is_an_expr() -> None:
    spec = parse_spec(spec_text("""
        name: m
        old: legacy
        new: modern
        tables:
          - source: customers
            columns:
              first_name: {expr: "split_part(name, ' ', 1)"}
              last_name: {expr: "substr(name, strpos(name, ' ') + 1)"}
              state: {from: status, transform: "pkg.mod:to_int"}
            reverse:
              name: "first_name || ' ' || last_name"
              status: {from: state, transform: "pkg.mod:to_text"}
              legacy: {transform: "pkg.mod:whole_row"}
              code: {from: code_v2}
        """))
    rev = spec.tables[0].reverse
    assert rev["name"].expr == "first_name || ' ' || last_name" and rev["name"].from_ is None
    assert (rev["status"].from_, rev["status"].transform) == ("state", "pkg.mod:to_text")
    assert rev["legacy"].from_ is None and rev["legacy"].transform == "pkg.mod:whole_row"
    assert rev["code"].from_ == "code_v2" and rev["code"].expr is None
    # the spec crosses Temporal as a dump: it must validate back to the same rules
    dumped = spec.model_dump(mode="json")
    assert dumped["tables"][0]["reverse"]["name"] == {"expr": "first_name || ' ' || last_name"}
    assert type(spec).model_validate(dumped) == spec


def test_reverse_rule_mistakes_are_reported_at_their_lines() -> None:
    found = problems_of("""
        name: m
        old: legacy
        new: modern
        tables:
          - source: customers
            reverse:
              name: {from: first_name, expr: "first_name"}
              note: {expr: "x; DROP TABLE customers"}
              phone: {transfrom: "pkg.mod:fn"}
              email: {}
        """)
    assert found == [
        "spec.yaml:7 tables[0].reverse.name: give exactly one of from / expr / transform (got ['from', 'expr'])",
        "spec.yaml:8 tables[0].reverse.note: an expression must not contain ';' (one SQL expression, not "
        "statements)",
        "spec.yaml:9 tables[0].reverse.phone.transfrom: unknown field (did you mean 'transform'?)",
        "spec.yaml:10 tables[0].reverse.email: give exactly one of from / expr / transform (got none)",
    ]
    assert problems_of("""
        name: m
        old: legacy
        new: modern
        tables:
          - source: customers
            reverse:
              2name: "a"
        """) == ["spec.yaml:6 tables[0].reverse: '2name' is not a column name"]


def test_duplicate_keys_are_refused_with_both_lines_all_at_once() -> None:
    """YAML lets a key appear twice and keeps the last: a spec edited by hand loses the first silently."""
    found = problems_of("""
        name: m
        old: legacy
        old: other
        new: modern
        tables:
          - source: orders
            columns:
              total: amount
              total: {from: price}
        tables:
          - source: items
        """)
    assert found == [
        "spec.yaml:3 old: 'old' is given twice (lines 2 and 3); remove one",
        "spec.yaml:9 tables[0].columns.total: 'total' is given twice (lines 8 and 9); remove one",
        "spec.yaml:10 tables: 'tables' is given twice (lines 5 and 10); remove one",
    ]


def test_duplicate_keys_do_not_hide_other_problems() -> None:
    found = problems_of("""
        name: m
        old: legacy
        new: modern
        tables:
          - source: orders
            batch_size: 0
            batch_size: 0
        """)
    assert found == [
        "spec.yaml:7 tables[0].batch_size: 'batch_size' is given twice (lines 6 and 7); remove one",
        "spec.yaml:7 tables[0].batch_size: Input should be greater than or equal to 1",
    ]
