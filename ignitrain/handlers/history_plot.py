"""``History.plot``: a PNG of a History's curves, one panel per metric, the best epoch
marked.

Kept apart from :mod:`ignitrain.handlers.history` because it is the only part that
needs matplotlib (an optional dependency, imported when a plot is asked for).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ignitrain.handlers.modes import infer_mode

if TYPE_CHECKING:  # annotations only: history.py imports this module
    from ignitrain.handlers.history import History

__all__ = ["best_point", "plot_history"]


def plot_history(
    history: History,
    path: str | os.PathLike,
    names: list[str] | None = None,
    *,
    best: str | None = None,
    best_epoch: int | None = None,
    columns: int = 3,
) -> Path:
    """Write a PNG of ``history`` (see :meth:`ignitrain.History.plot` for the arguments).

    Raises:
        ModuleNotFoundError: matplotlib is not installed.
        ValueError: nothing to plot, or ``columns`` < 1.
    """
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"Argument columns={columns!r} is not allowed: expected an int >= 1")
    try:  # optional dependency: only plotting needs it
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("pip install matplotlib to plot history") from exc
    panels = _panels(names or history.names())
    if not panels:
        raise ValueError("history is empty: nothing to plot")
    marked = best_point(history, best, best_epoch)
    cols = min(columns, len(panels))
    rows = -(-len(panels) // cols)
    # ~5 x 3.6 inches per panel at 100 dpi: 11-12 px text, a 1500 px wide image at most
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.6 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels.items()):
        per_iteration = title in ("lr", "momentum") or title.startswith("batch_")
        for name in series:
            values = history[name]
            style = "-" if len(values) > 30 else "o-"
            ax.plot(history.steps(name), values, style, label=name, markersize=3)
        if marked is not None and not per_iteration:
            epoch, name, value = marked
            ax.axvline(epoch, color="#c0392b", linestyle="--", linewidth=1, alpha=0.8)
            if name in series:
                ax.plot([epoch], [value], "*", color="#c0392b", markersize=12, zorder=5)
            ax.set_title(f"{title}  (best epoch {epoch})", fontsize=11)
        else:
            ax.set_title(title, fontsize=11)
        ax.set_xlabel("iteration" if per_iteration else "epoch")
        ax.legend(fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def best_point(
    history: History, best: str | None, best_epoch: int | None
) -> tuple[int, str, float] | None:
    """``(epoch, series, value)`` to mark, or ``None`` when there is nothing to rank.

    Args:
        history: The History plotted.
        best: The ranking series (default: the first ``val/`` series).
        best_epoch: The epoch to mark instead of the best one.
    """
    candidates = [best] if best else [n for n in history.names() if n.startswith("val/")]
    if not candidates or candidates[0] not in history:
        return None
    name = candidates[0]
    pairs = [(s, v) for s, v in zip(history.steps(name), history[name]) if v == v]
    if not pairs:
        return None
    if best_epoch is not None:
        value = dict(pairs).get(best_epoch, float("nan"))
        return best_epoch, name, value
    pick = min if infer_mode(name) == "min" else max
    # the first epoch reaching the best value, as the best checkpoint keeps it
    step, value = pick(pairs, key=lambda sv: (sv[1], -sv[0]) if pick is max else (sv[1], sv[0]))
    return step, name, value


def _panels(names: list[str]) -> dict[str, list[str]]:
    # one panel per metric: train/loss and val/loss share the panel "loss"
    panels: dict[str, list[str]] = {}
    for name in names:
        panels.setdefault(name.split("/")[-1], []).append(name)
    return panels
