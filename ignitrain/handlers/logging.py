"""Output for people: TensorBoard scalars, a progress bar, a one-line epoch summary.

TensorBoard mirrors the ``History`` (it subscribes to it), so the event files hold
exactly the values the History holds. Every scalar is written at the training
iteration it belongs to. Scalars go straight to the event file (no writer thread,
see :class:`ScalarEventWriter`); the flavors flush it just before each checkpoint is
written, and a resumed run opens its writer with ``purge_step`` one past the resumed
iteration: TensorBoard keeps everything the checkpoint covers, drops what a killed
run wrote after it, and steps never go backwards.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events

from ignitrain.handlers.history import History

__all__ = [
    "ScalarEventWriter",
    "attach_tensorboard",
    "attach_progress_bar",
    "attach_epoch_summary",
    "logger",
]

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
        self.writer: ScalarEventWriter | None = None

    def open(self, engine: Engine) -> None:
        if idist.get_rank() != 0 or self.writer is not None:
            return
        purge = engine.state.iteration + 1 if engine.state.iteration > 0 else None
        self.writer = ScalarEventWriter(self.log_dir, purge_step=purge)

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


class ScalarEventWriter:
    """TensorBoard scalars written straight to an event file: no queue, no thread.

    tensorboardX's ``SummaryWriter`` hands events to a logging thread through a queue,
    and its ``flush()`` does not wait for that queue: an event added just before a
    checkpoint could still be in flight when a SIGKILL lands, and the resumed run
    (which purges only what comes after its checkpoint) would miss it. Here
    :meth:`add_scalar` appends the record to the file's buffer at once and
    :meth:`flush` (before each checkpoint, and every ``flush_secs``) writes and fsyncs
    it. The file format and the purge marker are tensorboardX's own.

    Args:
        log_dir: Directory of the event file (created).
        purge_step: A resumed run's first step: TensorBoard hides events at this step
            and later that an earlier file holds.
        flush_secs: At most this long between flushes while scalars are added.
    """

    def __init__(
        self, log_dir: str | os.PathLike, purge_step: int | None = None, flush_secs: float = 30.0
    ) -> None:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.summary import scalar

        self._event, self._scalar = Event, scalar
        os.makedirs(log_dir, exist_ok=True)
        # tensorboardX names files by the second, and TensorBoard reads them in name
        # order: a nanosecond suffix keeps a run resumed within the same second from
        # truncating the killed run's file and sorts it after that file.
        suffix = f".{time.time_ns()}"
        self._file = EventsWriter(os.path.join(str(log_dir), "events"), suffix)
        if purge_step is not None:
            start = SessionLog(status=SessionLog.START)
            self._file.write_event(Event(wall_time=time.time(), step=purge_step, session_log=start))
        self.flush_secs = flush_secs
        self._flushed_at = time.monotonic()

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """Append ``tag = value`` at ``step``."""
        summary = self._scalar(tag, float(value))
        self._file.write_event(self._event(wall_time=time.time(), step=int(step), summary=summary))
        if time.monotonic() - self._flushed_at >= self.flush_secs:
            self.flush()

    def flush(self) -> None:
        """Write buffered records and fsync the file."""
        self._file.flush()
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()


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
