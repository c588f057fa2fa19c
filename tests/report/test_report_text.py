"""ignitrain/report/text.py and the report package's layout."""

import math

import pytest

from ignitrain.report import collect, render_html, summary_table, write_report
from ignitrain.report.text import esc, fmt, size_text


def test_values_are_formatted_and_escaped():
    assert fmt(0.123456) == "0.1235"
    assert fmt(math.nan) == "nan" and fmt(None) == "nan"
    assert size_text(512) == "512 B" and size_text(3 * 1024**2) == "3.0 MiB"
    assert esc('<a href="x">') == "&lt;a href=&quot;x&quot;&gt;"


def test_the_package_face_keeps_the_old_names():
    import ignitrain.report as report
    from ignitrain.report import page, summary, text

    assert report.collect is summary.collect and report.write_report is page.write_report
    assert report.render_html is page.render_html and report.summary_table is text.summary_table
    assert set(report.__all__) >= {"RunSummary", "MetricRow", "collect", "render_html"}


def test_bad_output_dir_is_named(tmp_path):
    with pytest.raises(TypeError, match="output_dir must be a path, got list"):
        collect([tmp_path])
    with pytest.raises(FileNotFoundError, match="holds no ignitrain run"):
        summary_table(tmp_path)


def test_a_damaged_config_still_renders_and_the_write_is_atomic(tmp_path):
    (tmp_path / "config.yaml").write_text("train: [unclosed\n")
    summary = collect(tmp_path)
    assert summary.job == {} and "unclosed" in summary.config_text
    assert "unclosed" in render_html(summary)
    path = write_report(tmp_path)
    assert path == tmp_path / "report.html" and path.read_text().startswith("<!DOCTYPE html>")
    assert not list(tmp_path.glob(".*.tmp")), "no temp file is left behind"
