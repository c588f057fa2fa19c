"""A run's report: one self-contained HTML page and a short terminal summary.

Both read only what a run leaves in its ``output_dir``: ``config.yaml`` (the job),
``history.json`` (every logged value; in ``meta`` why training stopped and the wall
time), ``evaluation.json`` (test metrics, when evaluated), ``run.json`` (the run
record with its resumes, when the run has one) and the files in ``checkpoints/``. So a
report can be made for any run, finished, stopped or still going, and again later::

    ignitrain report runs/digits_cnn        # writes runs/digits_cnn/report.html

The page has no external resources: CSS is inline and the curves are PNGs embedded
as base64, so it can be mailed or archived as one file.

One concept per module: :mod:`~ignitrain.report.summary` reads a run,
:mod:`~ignitrain.report.text` formats values and writes the terminal summary,
:mod:`~ignitrain.report.images` embeds the plots, :mod:`~ignitrain.report.page`
lays out the HTML page.
"""

from ignitrain.report.page import render_html, write_report
from ignitrain.report.summary import MetricRow, RunSummary, collect
from ignitrain.report.text import summary_table

__all__ = ["MetricRow", "RunSummary", "collect", "render_html", "summary_table", "write_report"]
