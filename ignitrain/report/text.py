"""Values as the report writes them, and the summary printed in the terminal."""

from __future__ import annotations

import datetime
import html
import math
import os

from ignitrain.report.summary import RunSummary, collect
from ignitrain.run_story import wall_time_text

__all__ = ["esc", "fmt", "size_text", "stop_text", "summary_table", "time_text"]


def esc(value: object) -> str:
    """``value`` as text safe in HTML (attributes included)."""
    return html.escape(str(value), quote=True)


def fmt(value: float | None) -> str:
    """A metric value with 4 significant digits (``"nan"`` for NaN or ``None``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.4g}"


def size_text(num_bytes: int) -> str:
    """``"12.3 MiB"``."""
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - loop always returns


def time_text(stamp: float) -> str:
    """A file time in local time, to the second."""
    return datetime.datetime.fromtimestamp(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def stop_text(summary: RunSummary) -> str:
    """Why and where the run stopped, with the run's own numbers."""
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


def summary_table(output_dir: str | os.PathLike) -> str:
    """A few lines for the terminal: stop reason, each metric's final and best, checkpoints.

    Example output::

        run     runs/digits_mlp
        stopped completed at epoch 2, iteration 48
        metric          final    best  (epoch)
        val/accuracy   0.9185  0.9185  (2)
        val/loss       0.3014  0.3014  (2)

    Raises:
        FileNotFoundError: ``output_dir`` is missing or holds no run.
    """
    summary = collect(output_dir)
    lines = [f"run       {summary.output_dir}", f"stopped   {stop_text(summary)}"]
    if summary.metrics:
        width = max(len("metric"), *(len(r.name) for r in summary.metrics))
        lines.append(f"{'metric':<{width}}  {'final':>10}  {'best':>10}  epoch")
        for row in summary.metrics:
            lines.append(
                f"{row.name:<{width}}  {fmt(row.final):>10}  {fmt(row.best):>10}  {row.best_step}"
            )
    if summary.evaluation:
        evaluation = summary.evaluation
        figures = ", ".join(f"{k} {fmt(v)}" for k, v in evaluation["metrics"].items())
        lines.append(
            f"test      {figures} ({evaluation.get('chosen') or evaluation.get('which', '?')} "
            f"checkpoint, epoch {evaluation.get('epoch', '?')}, {evaluation.get('data', '?')})"
        )
    wall = wall_time_text(summary.wall_time_s)
    if wall:
        lines.append(f"wall time {wall}")
    if summary.checkpoints:
        names = ", ".join(name for name, _, _ in summary.checkpoints)
        lines.append(f"checkpoints ({len(summary.checkpoints)}): {names}")
    return "\n".join(lines)
