"""The README's strategy guide shows the figures of the benchmark report, not numbers typed by hand."""

from __future__ import annotations

from pathlib import Path

from bench import guide

HEAD = "| strategy | consistency | latency impact p50 / p99 | what fails the request |"
ROW = "| `strict` | strong | x9.99 / x9.99 | either store |"
OTHER = "| `strict` | the adapters' shadow reads | the adapters |"


def test_the_readme_latency_column_matches_the_recorded_benchmark_report() -> None:
    values, written = guide._recorded()
    readme = guide.README.read_text()
    assert guide.render(readme, values, written) == readme, (
        "README.md's strategy latencies differ from bench/RESULTS.json: run `python -m bench.guide`")
    for strategy in guide.STRATEGIES:  # every row of the table carries a measured figure
        assert f"{strategy}_p99_x" in values, strategy
        assert strategy == "cdc" or f"{strategy}_p50_x" in values, strategy


def test_a_hand_edited_figure_is_replaced_by_the_report_and_a_missing_one_says_how_to_measure_it() -> None:
    text = f"{guide.SOURCE_BEGIN}old{guide.SOURCE_END}\n{HEAD}\n{ROW}\n\n{OTHER}\n"
    out = guide.render(text, {"strict_p50_x": "2.04", "strict_p99_x": "1.9", "n": "3000"}, "2026-12-05 19:00 UTC")
    assert "| x2.04 / x1.90 |" in out and "x9.99" not in out
    assert "2026-12-05 19:00 UTC; n = 3000" in out
    assert OTHER in out, "a row of another table named after a strategy was rewritten"
    assert "not measured" in guide.render(text, {}, "-")


def test_a_report_rerun_keeps_the_runs_recorded_by_hand(tmp_path: Path) -> None:
    from bench import report

    out = tmp_path / "RESULTS.md"
    out.write_text("# old\n\n## Figures\n\nold figures\n\n## Runs by hand\n\n### chaos seed 1\n\nlost 0\n")
    report.write([], out, quick=False)
    text = out.read_text()
    assert "old figures" not in text, "the report's own part was not rewritten"
    assert text.rstrip().endswith("## Runs by hand\n\n### chaos seed 1\n\nlost 0")
    out.write_text("# old\n")
    report.write([], out, quick=False)
    assert "Runs by hand" not in out.read_text()
