"""``profile=True``: Ignite's ``HandlersTimeProfiler`` on the training engine, its table
in ``output_dir/profile.csv`` and a short summary in the log and the report.

Ignite's profiler times the data loading, the step (process function) and every
handler of every event; it wraps the handlers present when the engine starts and
restores them when it completes. Its own ``write_results`` writes one row per
iteration and needs pandas; ``profile.csv`` here is the aggregated table of
``get_results()`` (one row per handler: event, total, min, max, mean, std, share of
the run), written with the ``csv`` module. The summary names the share of data
loading, the step, and the handlers that take the most time.
"""

from __future__ import annotations

import csv
import html
import io
import logging
import os
from pathlib import Path
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers import HandlersTimeProfiler

from ignitrain._files import write_atomic

__all__ = ["attach_profiler", "profile_rows", "profile_summary", "profile_html", "write_csv"]

logger = logging.getLogger("ignitrain")
FILE = "profile.csv"
_COLUMNS = ("handler", "event", "total_s", "min_s", "max_s", "mean_s", "std_s", "share")


def profile_rows(profiler: HandlersTimeProfiler) -> list[dict[str, Any]]:
    """One dict per timed item (handlers, ``Processing``, ``Dataflow``), by total time."""
    rows = []
    for name, event, total, low, high, mean, std in profiler.get_results():
        if name == "Total":
            continue
        rows.append(
            {
                "handler": {"Processing": "step", "Dataflow": "data loading"}.get(name, name),
                "event": "" if event == "None" else event,
                "total_s": _num(total),
                "min_s": _num(low[0] if isinstance(low, tuple) else low),
                "max_s": _num(high[0] if isinstance(high, tuple) else high),
                "mean_s": _num(mean),
                "std_s": _num(std),
            }
        )
    whole = sum(r["total_s"] or 0.0 for r in rows) or 1.0
    for row in rows:
        row["share"] = (row["total_s"] or 0.0) / whole
    return sorted(rows, key=lambda r: -(r["total_s"] or 0.0))


def _num(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def profile_summary(rows: list[dict[str, Any]], top: int = 3) -> str:
    """``data loading 12% | step 80% | top handlers: history (EPOCH_COMPLETED) 3%, ...``."""
    by_name = {r["handler"]: r for r in rows if r["handler"] in ("data loading", "step")}
    parts = [f"{name} {by_name[name]['share']:.0%}" for name in ("data loading", "step")
             if name in by_name]  # fmt: skip
    handlers = [r for r in rows if r["handler"] not in ("data loading", "step")][:top]
    if handlers:
        listed = ", ".join(f"{r['handler']} ({r['event']}) {r['share']:.1%}" for r in handlers)
        parts.append(f"top handlers: {listed}")
    return " | ".join(parts)


def attach_profiler(engine: Engine, output_dir: str | os.PathLike | None) -> HandlersTimeProfiler:
    """Profile ``engine``; at ``COMPLETED`` write ``profile.csv`` and log the summary
    (rank 0). Returns Ignite's profiler (``get_results()``, ``print_results``)."""
    if not isinstance(engine, Engine):
        raise TypeError(f"engine must be an ignite Engine, got {type(engine).__name__}")
    profiler = HandlersTimeProfiler()
    profiler.attach(engine)

    def report(engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        rows = profile_rows(profiler)
        if output_dir is not None:
            write_csv(rows, Path(output_dir) / FILE)
        logger.info("Profile: %s", profile_summary(rows))

    engine.add_event_handler(Events.COMPLETED, report)
    return profiler


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write ``rows`` (:func:`profile_rows`) as ``path`` atomically (never a partial file)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())


def profile_html(output_dir: str | os.PathLike, top: int = 12) -> str | None:
    """The report section of ``profile.csv`` (``None`` when the run was not profiled)."""
    path = Path(output_dir) / FILE
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (FileNotFoundError, csv.Error, UnicodeDecodeError):
        return None
    for row in rows:
        row["share"] = _num(row.get("share")) or 0.0
    e = html.escape
    body = "".join(
        f"<tr><td>{e(r.get('handler', ''))}</td><td>{e(r.get('event', ''))}</td>"
        f"<td class=num>{e(r.get('total_s', ''))}</td><td class=num>{e(r.get('mean_s', ''))}"
        f"</td><td class=num>{r['share']:.1%}</td></tr>"
        for r in rows[:top]
    )
    head = (
        "<tr><th>handler</th><th>event</th><th class=num>total s</th>"
        "<th class=num>mean s</th><th class=num>share</th></tr>"
    )
    summary = e(profile_summary(rows))
    return f"<p>{summary}</p><table>{head}{body}</table>"
