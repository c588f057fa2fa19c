"""A run's report: one self-contained HTML page and a short terminal summary.

Both read only what a run leaves in its ``output_dir``: ``config.yaml`` (the job),
``history.json`` (every logged value; in ``meta`` why training stopped and the wall
time), ``evaluation.json`` (test metrics, when evaluated), ``run.json`` (the run
record with its resumes, when the run has one) and the files in ``checkpoints/``. So a
report can be made for any run, finished, stopped or still going, and again later::

    ignitrain report runs/digits_cnn        # writes runs/digits_cnn/report.html

The page has no external resources: CSS is inline and the curves are a PNG embedded
as base64, so it can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ignitrain.handlers.history import History, infer_mode
from ignitrain.handlers.profile import profile_html
from ignitrain.run_record import run_record_html

__all__ = ["RunSummary", "MetricRow", "collect", "render_html", "summary_table", "write_report"]


@dataclass
class MetricRow:
    """One epoch-level series: its last value and its best value and epoch."""

    name: str
    final: float
    best: float
    best_step: int
    last_step: int
    mode: str


@dataclass
class RunSummary:
    """What the report shows, read from an ``output_dir``."""

    output_dir: Path
    config_text: str | None
    job: dict[str, Any]
    history: History | None
    metrics: list[MetricRow] = field(default_factory=list)
    stop_reason: str | None = None
    stopped_at: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[tuple[str, int, float]] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None
    wall_time_s: float | None = None
    stop_detail: str = ""
    resumes: list[dict[str, Any]] = field(default_factory=list)
    world_sizes: list[tuple[str, int, int | None]] = field(default_factory=list)


def _has_history(path: Path) -> bool:
    # history.jsonl is appended each epoch, history.json written at the end: a killed
    # run has only the journal (History.load reads the newer of the two)
    return (path / "history.json").is_file() or (path / "history.jsonl").is_file()


def _check_dir(output_dir: str | os.PathLike) -> Path:
    if not isinstance(output_dir, (str, os.PathLike)):
        raise TypeError(f"output_dir must be a path, got {type(output_dir).__name__}")
    path = Path(output_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"output_dir {str(path)!r} does not exist or is not a directory")
    if not _has_history(path) and not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} holds no ignitrain run (neither history.json(l) nor config.yaml)"
        )
    return path


def collect(output_dir: str | os.PathLike) -> RunSummary:
    """Read config, history, stop reason and checkpoint list from ``output_dir``.

    Raises:
        FileNotFoundError: ``output_dir`` is missing or holds no run.
        ValueError: ``history.json`` is not a history file.
    """
    path = _check_dir(output_dir)
    config_text, job = _read_config(path / "config.yaml")
    if config_text is None:  # a script's run: its checkpoints record the config
        config_text, job = _config_from_checkpoint(path)
    history = History.load(path) if _has_history(path) else None
    summary = RunSummary(output_dir=path, config_text=config_text, job=job, history=history)
    if history is not None:
        summary.metrics = _metric_rows(history)
        summary.stop_reason = history.meta.get("stop_reason")
        summary.stopped_at = dict(history.meta.get("stopped_at") or {})
    summary.checkpoints = _list_checkpoints(path / "checkpoints")
    _collect_story(summary)
    return summary


def _collect_story(summary: RunSummary) -> None:
    """Test metrics, wall time, stop detail and resumes (see :mod:`ignitrain.run_story`)."""
    from ignitrain.evaluation_record import read_evaluation
    from ignitrain.run_story import (
        checkpoint_world_sizes,
        read_run_record,
        resume_rows,
        stop_detail,
    )

    summary.evaluation = read_evaluation(summary.output_dir)
    train = summary.job.get("train") or {}
    if summary.history is not None:
        wall = summary.history.meta.get("wall_time_s")
        summary.wall_time_s = float(wall) if isinstance(wall, (int, float)) else None
        summary.stop_detail = stop_detail(summary.stop_reason, train, summary.history)
    record = read_run_record(summary.output_dir)
    summary.resumes = resume_rows(record)
    if summary.wall_time_s is None and record:
        wall = record.get("wall_time_s")
        summary.wall_time_s = float(wall) if isinstance(wall, (int, float)) else None
    summary.world_sizes = checkpoint_world_sizes(summary.output_dir / "checkpoints")


def _read_config(path: Path) -> tuple[str | None, dict[str, Any]]:
    if not path.is_file():
        return None, {}
    text = path.read_text()
    try:
        import yaml

        data = yaml.safe_load(text)
    except Exception:  # a report must still render for a damaged config file
        data = None
    return text, data if isinstance(data, dict) else {}


def _config_from_checkpoint(path: Path) -> tuple[str | None, dict[str, Any]]:
    """The config and model description saved in the run's newest valid checkpoint."""
    from ignitrain.handlers.checkpoint import CheckpointError, latest_in, safe_load

    try:
        payload = safe_load(latest_in(path))
    except (CheckpointError, OSError):
        return None, {}
    config = payload.get("config")
    if not isinstance(config, dict):
        return None, {}
    job: dict[str, Any] = {"train": config}
    described = payload.get("model_description")
    if isinstance(described, dict) and len(described) == 1:
        (model,) = described.values()
        if isinstance(model, dict) and "class" in model:
            job["model"] = {"class": model["class"], "args": model.get("args") or {}}
    text = "# from the newest checkpoint (this run has no config.yaml)\n"
    try:
        import yaml
    except ImportError:  # pyyaml is an extra: JSON is YAML too
        return text + json.dumps(job, indent=2, default=str), job
    return text + yaml.safe_dump(job, sort_keys=False), job


def _metric_rows(history: History) -> list[MetricRow]:
    """Epoch-level series (``split/metric``), validation first."""
    names = [n for n in history.names() if "/" in n and not n.split("/")[-1].startswith("batch_")]
    names.sort(key=lambda n: (n.split("/")[0] != "val", n.split("/")[0], n.split("/", 1)[1]))
    rows = []
    for name in names:
        values, steps = history[name], history.steps(name)
        if not values:
            continue
        mode = infer_mode(name)
        finite = [(v, s) for v, s in zip(values, steps) if not math.isnan(v)]
        if finite:
            pick = min if mode == "min" else max
            best, best_step = pick(finite, key=lambda pair: pair[0])
        else:
            best, best_step = math.nan, steps[-1]
        rows.append(MetricRow(name, values[-1], best, best_step, steps[-1], mode))
    return rows


def _list_checkpoints(directory: Path) -> list[tuple[str, int, float]]:
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        # temporary files of an atomic write in progress start with a dot; the
        # latest pointer (.json) is not a checkpoint
        if path.is_file() and path.suffix == ".pt" and not path.name.startswith("."):
            stat = path.stat()
            found.append((path.name, stat.st_size, stat.st_mtime))
    return sorted(found, key=lambda item: (item[2], item[0]))


# -- formatting helpers -----------------------------------------------------------------------


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.4g}"


def _size(num_bytes: int) -> str:
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - loop always returns


def _time(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _stop_text(summary: RunSummary) -> str:
    if summary.history is None:
        return "not started (no history.json)"
    if summary.stop_reason is None:
        return "unknown: the run is still going or was killed before it finished"
    where = summary.stopped_at
    at = ""
    if where:
        at = f" at epoch {where.get('epoch', '?')}, iteration {where.get('iteration', '?')}"
    detail = f": {summary.stop_detail}" if summary.stop_detail else ""
    return f"{summary.stop_reason}{at}{detail}"


# -- terminal -----------------------------------------------------------------------------------


def summary_table(output_dir: str | os.PathLike) -> str:
    """A few lines for the terminal: stop reason, each metric's final and best, checkpoints.

    Example output::

        run     runs/digits_mlp
        stopped completed at epoch 2, iteration 48
        metric          final    best  (epoch)
        val/accuracy   0.9185  0.9185  (2)
        val/loss       0.3014  0.3014  (2)
    """
    summary = collect(output_dir)
    lines = [f"run       {summary.output_dir}", f"stopped   {_stop_text(summary)}"]
    if summary.metrics:
        width = max(len("metric"), *(len(r.name) for r in summary.metrics))
        lines.append(f"{'metric':<{width}}  {'final':>10}  {'best':>10}  epoch")
        for row in summary.metrics:
            lines.append(
                f"{row.name:<{width}}  {_fmt(row.final):>10}  {_fmt(row.best):>10}  {row.best_step}"
            )
    if summary.evaluation:
        figures = ", ".join(f"{k} {_fmt(v)}" for k, v in summary.evaluation["metrics"].items())
        evaluation = summary.evaluation
        lines.append(
            f"test      {figures} ({evaluation.get('chosen') or evaluation.get('which', '?')} "
            f"checkpoint, epoch {evaluation.get('epoch', '?')}, {evaluation.get('data', '?')})"
        )
    from ignitrain.run_story import wall_time_text

    if wall_time_text(summary.wall_time_s):
        lines.append(f"wall time {wall_time_text(summary.wall_time_s)}")
    if summary.checkpoints:
        names = ", ".join(name for name, _, _ in summary.checkpoints)
        lines.append(f"checkpoints ({len(summary.checkpoints)}): {names}")
    return "\n".join(lines)


# -- HTML ---------------------------------------------------------------------------------------

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


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


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
    from ignitrain.run_story import wall_time_text

    facts.append(("wall time", wall_time_text(summary.wall_time_s)))
    if summary.evaluation:
        metrics = summary.evaluation["metrics"]
        key = next((k for k in ("accuracy", "loss") if k in metrics), next(iter(metrics), None))
        if key is not None:
            facts.append((f"test {key}", _fmt(metrics[key])))
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
    from ignitrain.config import TrainConfig

    defaults = TrainConfig().to_dict()
    return {k: v for k, v in train.items() if k in defaults and v != defaults[k]}


def _stop_html(summary: RunSummary) -> str:
    css = "stop-completed" if summary.stop_reason == "completed" else "stop-other"
    return f'<p class="{css}"><b>Stop reason:</b> {_e(_stop_text(summary))}</p>'


def _metrics_html(summary: RunSummary) -> str:
    if not summary.metrics:
        return '<p class="muted">No epoch metrics were logged.</p>'
    rows = "".join(
        f"<tr><td>{_e(r.name)}</td><td class=num>{_e(_fmt(r.final))}</td>"
        f"<td class=num>{_e(_fmt(r.best))}</td><td class=num>{_e(r.best_step)}</td>"
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
        f"<tr><td>{_e(k)}</td><td class=num>{_e(_fmt(v))}</td></tr>"
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


def _resumes_html(summary: RunSummary) -> str | None:
    """Every resume the run record lists, and the world size the checkpoints were saved
    with (a change means the run moved between process counts)."""
    parts = []
    if summary.resumes:
        keys: list[str] = []
        for row in summary.resumes:
            keys += [k for k in row if k not in keys]
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


def _best_series(summary: RunSummary) -> str | None:
    metric = (summary.job.get("train") or {}).get("best_metric")
    if not metric or summary.history is None:
        return None
    name = metric if str(metric).startswith("train/") else f"val/{metric}"
    return name if name in summary.history else None


def _curves_html(summary: RunSummary) -> str:
    """One embedded PNG per panel (train and val of a metric share one), in a grid.

    One wide image of all panels shrinks its text to unreadable once a run logs more
    than three metrics; separate panels wrap to the page width instead.
    """
    if summary.history is None or not len(summary.history):
        return '<p class="muted">No history to plot.</p>'
    panels: dict[str, list[str]] = {}
    for name in summary.history.names():
        panels.setdefault(name.split("/")[-1], []).append(name)
    # epoch metrics (what the run is judged by) first, per-iteration series (batch
    # loss, lr, momentum) after them
    order = sorted(
        panels.items(),
        key=lambda item: any(
            "/" not in n or n.split("/")[-1].startswith("batch_") for n in item[1]
        ),
    )
    images = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (title, names) in enumerate(order):
            png = Path(tmp) / f"panel{i}.png"
            try:
                summary.history.plot(png, names=names, best=_best_series(summary))
            except ModuleNotFoundError as exc:
                return f'<p class="muted">{_e(exc)}</p>'
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            images.append(
                f'<img class="curve" alt="{_e(title)}: {_e(", ".join(names))}" '
                f'src="data:image/png;base64,{data}">'
            )
    return f'<div class="curves">{"".join(images)}</div>'


def _lr_find_html(summary: RunSummary) -> str | None:
    png = summary.output_dir / "lr_find.png"
    if not png.is_file():
        return None
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (
        '<img class="lr-find" alt="learning-rate range test" '
        f'src="data:image/png;base64,{data}"><p class="muted">From <code>ignitrain lr-find</code> '
        f"({_e(_time(png.stat().st_mtime))}).</p>"
    )


def _checkpoints_html(summary: RunSummary) -> str:
    if not summary.checkpoints:
        return '<p class="muted">No checkpoints in checkpoints/.</p>'
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td class=num>{_e(_size(size))}</td>"
        f"<td>{_e(_time(mtime))}</td></tr>"
        for name, size, mtime in summary.checkpoints
    )
    head = "<tr><th>file</th><th class=num>size</th><th>modified</th></tr>"
    return f"<table>{head}{rows}</table>"


def _config_html(summary: RunSummary) -> str:
    if summary.config_text is None:
        return '<p class="muted">No config.yaml and no readable checkpoint in this run.</p>'
    return f'<pre class="config">{_e(summary.config_text)}</pre>'


def render_html(summary: RunSummary) -> str:
    """The report page for ``summary`` as one HTML string (all values escaped)."""
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S")
    title = f"ignitrain run: {summary.output_dir}"
    sections = [
        ("Summary", _facts_html(summary) + _stop_html(summary)),
        ("Test", _test_html(summary)),
        ("Metrics", _metrics_html(summary)),
        ("Resumes", _resumes_html(summary)),
        ("Curves", _curves_html(summary)),
        ("Learning-rate range test", _lr_find_html(summary)),
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
        FileNotFoundError: ``output_dir`` is missing or holds no run.
    """
    summary = collect(output_dir)
    path = summary.output_dir / "report.html"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(render_html(summary), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
