"""The report page: its sections, its style, and writing ``report.html``."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

from ignitrain._files import write_atomic
from ignitrain.config import TrainConfig
from ignitrain.handlers.profile import profile_html
from ignitrain.report.images import curves_html, lr_find_html
from ignitrain.report.summary import RunSummary, collect
from ignitrain.report.text import esc as _e
from ignitrain.report.text import fmt, size_text, stop_text, time_text
from ignitrain.run_record import run_record_html
from ignitrain.run_story import wall_time_text

__all__ = ["render_html", "write_report"]

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0; background: #f4f5f7; color: #1d2330; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 40px; }
h1 { font-size: 22px; margin: 0 0 4px; word-break: break-all; }
h2 { font-size: 16px; margin: 0 0 10px; color: #2c3a55; }
.sub { color: #5b6478; margin: 0 0 18px; }
section { background: #fff; border: 1px solid #dde1e8; border-radius: 8px;
          padding: 16px 18px; margin: 0 0 16px; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 10px; }
.fact { background: #f7f8fa; border-radius: 6px; padding: 8px 10px; min-width: 0; }
.fact b { display: block; font-size: 11px; text-transform: uppercase; letter-spacing: .04em;
          color: #6a7387; font-weight: 600; }
.fact.wide { grid-column: span 2; }
.fact span { font-size: 15px; overflow-wrap: anywhere; }
.options { margin: 12px 0 0; line-height: 1.9; }
code { font: 12px ui-monospace, "DejaVu Sans Mono", monospace; background: #eef0f4;
       border-radius: 4px; padding: 1px 5px; white-space: nowrap; }
img.lr-find { max-width: 520px; width: 100%; height: auto; display: block; }
@media (min-width: 900px) { pre.config { column-count: 2; column-gap: 28px; } }
table { border-collapse: collapse; width: 100%; }
table.narrow { width: auto; min-width: 260px; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid #eceef2; }
th { font-size: 12px; color: #5b6478; font-weight: 600; background: #f7f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; font-family: ui-monospace,
         "DejaVu Sans Mono", monospace; }
th.num { text-align: right; }
/* two columns on a laptop screen: each 500 px panel shows at (nearly) 100% */
.curves { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 12px; }
img.curve { max-width: 560px; }
img.curve { width: 100%; height: auto; display: block; }
pre { background: #f7f8fa; border-radius: 6px; padding: 12px; overflow-x: auto; margin: 0;
      font: 12px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; white-space: pre-wrap; }
.stop-completed { color: #1b7f3b; }
.stop-other { color: #a1580b; }
.muted { color: #6a7387; }
footer { color: #8a92a3; font-size: 12px; text-align: center; }
"""


def render_html(summary: RunSummary) -> str:
    """The report page for ``summary`` as one HTML string (all values escaped)."""
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S")
    title = f"ignitrain run: {summary.output_dir}"
    sections = [
        ("Summary", _facts_html(summary) + _stop_html(summary)),
        ("Test", _test_html(summary)),
        ("Metrics", _metrics_html(summary)),
        ("Resumes", _resumes_html(summary)),
        ("Curves", curves_html(summary)),
        ("Learning-rate range test", lr_find_html(summary)),
        ("Checkpoints", _checkpoints_html(summary)),
        ("Run record", run_record_html(summary.output_dir)),  # issue 15
        ("Profile", profile_html(summary.output_dir)),  # issue 15
        ("Config", _config_html(summary)),
    ]
    body = "".join(
        f"<section><h2>{_e(h)}</h2>{content}</section>" for h, content in sections if content
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{_e(title)}</h1><p class=sub>Report written {_e(now)}</p>{body}"
        f"<footer>ignitrain report &middot; {_e(summary.output_dir.resolve())}</footer>"
        "</main></body></html>\n"
    )


def write_report(output_dir: str | os.PathLike) -> Path:
    """Write ``output_dir/report.html`` (atomically) and return its path.

    Raises:
        TypeError: ``output_dir`` is not a path.
        FileNotFoundError: ``output_dir`` is missing or holds no run.
    """
    summary = collect(output_dir)
    # not durable: the page is rebuilt from the run's own (durable) files at any time
    return write_atomic(summary.output_dir / "report.html", render_html(summary), durable=False)


def _facts_html(summary: RunSummary) -> str:
    job, train = summary.job, summary.job.get("train") or {}
    model = job.get("model") or {}
    data = job.get("data") or {}
    facts = [
        ("flavor", job.get("flavor")),
        ("model", model.get("class") if isinstance(model, dict) else None),
        ("data", data.get("factory") if isinstance(data, dict) else None),
        ("optimizer", train.get("optimizer")),
        ("learning rate", train.get("lr")),
        ("batch size", train.get("batch_size")),
        ("epochs (planned)", train.get("num_epochs")),
        ("lr schedule", train.get("lr_scheduler")),
    ]
    if summary.metrics:
        facts.append(("epochs (done)", max(row.last_step for row in summary.metrics)))
    facts.append(("wall time", wall_time_text(summary.wall_time_s)))
    if summary.evaluation:
        metrics = summary.evaluation["metrics"]
        key = next((k for k in ("accuracy", "loss") if k in metrics), next(iter(metrics), None))
        if key is not None:
            facts.append((f"test {key}", fmt(metrics[key])))
    if summary.resumes:
        facts.append(("resumed", f"{len(summary.resumes)} time(s)"))
    wide = ("model", "data")  # import paths: give them two columns instead of breaking them
    cells = "".join(
        f'<div class="fact{" wide" if k in wide else ""}"><b>{_e(k)}</b><span>{_e(v)}</span></div>'
        for k, v in facts
        if v is not None
    )
    changed = _changed_options(train)
    options = ""
    if changed:
        items = ", ".join(f"<code>{_e(k)}={_e(v)}</code>" for k, v in changed.items())
        options = f'<p class="options"><b>Options set:</b> {items}</p>'
    return f'<div class="facts">{cells}</div>{options}'


def _changed_options(train: dict[str, Any]) -> dict[str, Any]:
    """The job's ``train`` options that differ from ``TrainConfig``'s defaults."""
    if not train:
        return {}
    defaults = TrainConfig().to_dict()
    return {k: v for k, v in train.items() if k in defaults and v != defaults[k]}


def _stop_html(summary: RunSummary) -> str:
    css = "stop-completed" if summary.stop_reason == "completed" else "stop-other"
    return f'<p class="{css}"><b>Stop reason:</b> {_e(stop_text(summary))}</p>'


def _metrics_html(summary: RunSummary) -> str:
    if not summary.metrics:
        return '<p class="muted">No epoch metrics were logged.</p>'
    rows = "".join(
        f"<tr><td>{_e(r.name)}</td><td class=num>{_e(fmt(r.final))}</td>"
        f"<td class=num>{_e(fmt(r.best))}</td><td class=num>{_e(r.best_step)}</td>"
        f"<td>{_e(r.mode)}</td></tr>"
        for r in summary.metrics
    )
    head = (
        "<tr><th>metric</th><th class=num>final</th><th class=num>best</th>"
        "<th class=num>best at epoch</th><th>better</th></tr>"
    )
    return f"<table>{head}{rows}</table>"


def _test_html(summary: RunSummary) -> str | None:
    """The recorded test evaluation: which checkpoint, which data, every metric."""
    evaluation = summary.evaluation
    if not evaluation:
        return None
    rows = "".join(
        f"<tr><td>{_e(k)}</td><td class=num>{_e(fmt(v))}</td></tr>"
        for k, v in evaluation["metrics"].items()
    )
    where = (
        f"{_e(evaluation.get('chosen') or evaluation.get('which', '?'))} checkpoint "
        f"<code>{_e(Path(str(evaluation.get('checkpoint', '?'))).name)}</code> (epoch "
        f"{_e(evaluation.get('epoch', '?'))}) on <code>{_e(evaluation.get('data', '?'))}</code>"
        f" ({_e(evaluation.get('num_samples', '?'))} samples)"
    )
    return (
        f'<p>{where}</p><table class="narrow"><tr><th>metric</th><th class=num>test</th></tr>'
        f"{rows}</table>"
    )


# What run.json's environment() repeats in every start: the Run record section shows it,
# and eight more columns push the resumes table past the page width.
_ENVIRONMENT_KEYS = frozenset(
    {"ignitrain", "torch", "ignite", "python", "git_commit", "git_dirty", "cwd", "command"}
)


def _resumes_html(summary: RunSummary) -> str | None:
    """Every resume the run record lists, and the world size the checkpoints were saved
    with (a change means the run moved between process counts)."""
    parts = []
    if summary.resumes:
        keys: list[str] = []
        for row in summary.resumes:
            keys += [k for k in row if k not in keys and k not in _ENVIRONMENT_KEYS]
        head = "".join(f"<th>{_e(k)}</th>" for k in keys)
        body = "".join(
            "<tr>" + "".join(f"<td>{_e(row.get(k, ''))}</td>" for k in keys) + "</tr>"
            for row in summary.resumes
        )
        parts.append(f"<table><tr>{head}</tr>{body}</table>")
    sizes = [(name, it, ws) for name, it, ws in summary.world_sizes if ws is not None]
    groups: list[list[Any]] = []  # [world size, first iteration, last iteration]
    for _, iteration, world in sizes:
        if groups and groups[-1][0] == world:
            groups[-1][2] = iteration
        else:
            groups.append([world, iteration, iteration])
    if len(groups) > 1:
        steps = "; then ".join(
            f"{world} process(es) (checkpoints at iterations {first}..{last})"
            for world, first, last in groups
        )
        parts.append(f"<p><b>World size changed:</b> {steps}.</p>")
    elif groups:
        parts.append(
            f'<p class="muted">Every kept checkpoint was written by {groups[0][0]} process(es).</p>'
        )
    if not summary.resumes and not sizes:
        return None  # nothing ran that could have been resumed
    if not summary.resumes:
        parts.insert(
            0,
            '<p class="muted">Not resumed (no resume in the run record).</p>'
            if (summary.output_dir / "run.json").is_file()
            else '<p class="muted">No run record (run.json) in this directory.</p>',
        )
    return "".join(parts)


def _checkpoints_html(summary: RunSummary) -> str:
    if not summary.checkpoints:
        return '<p class="muted">No checkpoints in checkpoints/.</p>'
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td class=num>{_e(size_text(size))}</td>"
        f"<td>{_e(time_text(mtime))}</td></tr>"
        for name, size, mtime in summary.checkpoints
    )
    head = "<tr><th>file</th><th class=num>size</th><th>modified</th></tr>"
    return f"<table>{head}{rows}</table>"


def _config_html(summary: RunSummary) -> str:
    if summary.config_text is None:
        return '<p class="muted">No config.yaml and no readable checkpoint in this run.</p>'
    return f'<pre class="config">{_e(summary.config_text)}</pre>'
