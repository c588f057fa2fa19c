"""Output for people: TensorBoard scalars, a progress bar, a one-line epoch summary.

TensorBoard mirrors the ``History`` (it subscribes to it), so the event files hold
exactly the values the History holds. Every scalar is written at the training
iteration it belongs to. The flavors flush the writer just before each checkpoint
is written, and a resumed run opens its writer with ``purge_step`` one past the
resumed iteration: TensorBoard keeps everything the checkpoint covers, drops what a
killed run wrote after it, and steps never go backwards.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events

from ignitrain.handlers.history import History

__all__ = ["attach_tensorboard", "attach_progress_bar", "attach_epoch_summary", "logger"]

logger = logging.getLogger("ignitrain")


def attach_tensorboard(engine: Engine, history: History, log_dir: str | os.PathLike) -> Any:
    """Write every value logged to ``history`` as a TensorBoard scalar (rank 0 only).

    The writer is opened lazily at ``STARTED`` (so a resumed engine's iteration is
    known) and closed at ``COMPLETED``. Returns a small handle with ``writer`` and
    ``close()``; on ranks other than 0 nothing is written.
    """
    handle = _TensorBoard(engine, log_dir)
    history.subscribe(handle.write)
    engine.add_event_handler(Events.STARTED, handle.open)
    engine.add_event_handler(Events.COMPLETED, handle.close)
    engine.add_event_handler(Events.TERMINATE, handle.flush)
    return handle


class _TensorBoard:
    def __init__(self, engine: Engine, log_dir: str | os.PathLike) -> None:
        self.engine = engine
        self.log_dir = str(log_dir)
        self.writer: Any = None

    def open(self, engine: Engine) -> None:
        if idist.get_rank() != 0 or self.writer is not None:
            return
        from tensorboardX import SummaryWriter

        purge = engine.state.iteration + 1 if engine.state.iteration > 0 else None
        self.writer = SummaryWriter(self.log_dir, purge_step=purge, flush_secs=30)

    def write(self, name: str, value: float, step: int) -> None:
        if self.writer is not None:
            # one x axis for all scalars: the training iteration
            self.writer.add_scalar(name, value, self.engine.state.iteration)

    def flush(self, _: Engine | None = None) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self, _: Engine | None = None) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def attach_progress_bar(engine: Engine, *, enabled: bool = True) -> Any:
    """A tqdm bar over each epoch when ``enabled``, on rank 0, and stderr is a terminal.

    Returns the Ignite ``ProgressBar`` or ``None`` when not attached.
    """
    if not enabled or idist.get_rank() != 0 or not sys.stderr.isatty():
        return None
    try:
        from ignite.handlers import ProgressBar
    except ImportError:  # tqdm missing: the epoch summary still reports progress
        return None
    bar = ProgressBar(persist=False)
    bar.attach(
        engine,
        output_transform=lambda out: (
            {"loss": out["loss"]} if isinstance(out, dict) and "loss" in out else None
        ),
    )
    return bar


def attach_epoch_summary(engine: Engine, history: History, *, log: logging.Logger = logger) -> None:
    """Log one line per epoch on rank 0: epoch, the epoch's series, time."""

    def summary(engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        epoch = engine.state.epoch
        parts = [f"Epoch {epoch}/{engine.state.max_epochs}"]
        for name in history.names():
            steps = history.steps(name)
            if steps and steps[-1] == epoch and "/" in name and not name.startswith("train/batch"):
                parts.append(f"{name} {history.latest(name):.4g}")
        if "lr" in history:
            parts.append(f"lr {history.latest('lr'):.3g}")
        parts.append(f"{engine.state.times.get('EPOCH_COMPLETED') or 0:.1f}s")
        log.info(" | ".join(parts))

    engine.add_event_handler(Events.EPOCH_COMPLETED, summary)
