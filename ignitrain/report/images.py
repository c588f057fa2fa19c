"""The report's pictures: the History's curves and the LR range test, embedded as PNG."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

from ignitrain.report.summary import RunSummary
from ignitrain.report.text import esc as _e
from ignitrain.report.text import time_text

__all__ = ["curves_html", "lr_find_html"]


def _img(css: str, alt: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{css}" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _best_series(summary: RunSummary) -> str | None:
    """The series the best checkpoint ranks by (marked on its panel), if logged."""
    metric = (summary.job.get("train") or {}).get("best_metric")
    if not metric or summary.history is None:
        return None
    name = metric if str(metric).startswith("train/") else f"val/{metric}"
    return name if name in summary.history else None


def curves_html(summary: RunSummary) -> str:
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
            except ModuleNotFoundError as exc:  # matplotlib is optional: say how to get it
                return f'<p class="muted">{_e(exc)}</p>'
            images.append(_img("curve", f"{title}: {', '.join(names)}", png.read_bytes()))
    return f'<div class="curves">{"".join(images)}</div>'


def lr_find_html(summary: RunSummary) -> str | None:
    """The plot ``ignitrain lr-find`` left in the run directory, if any."""
    png = summary.output_dir / "lr_find.png"
    if not png.is_file():
        return None
    return (
        _img("lr-find", "learning-rate range test", png.read_bytes())
        + '<p class="muted">From <code>ignitrain lr-find</code> '
        f"({_e(time_text(png.stat().st_mtime))}).</p>"
    )
