"""Output for people: TensorBoard scalars, a progress bar, a one-line epoch summary.

TensorBoard mirrors the ``History`` (it subscribes to it), so the event files hold
exactly the values the History holds. Every scalar is written at the training
iteration it belongs to. Scalars are queued as numbers and encoded into the event
file at each flush (no writer thread holding events, see :class:`ScalarEventWriter`);
the flavors flush just before each checkpoint is written, and a resumed run opens
its writer with ``purge_step`` one past the resumed iteration: TensorBoard keeps
everything the checkpoint covers, drops what a killed run wrote after it, and steps
never go backwards.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
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
    """The handle :func:`attach_tensorboard` returns: the writer of rank 0 and its events."""

    def __init__(self, engine: Engine, log_dir: str | os.PathLike) -> None:
        self.engine = engine
        self.log_dir = str(log_dir)
        self.writer: ScalarEventWriter | None = None

    def open(self, engine: Engine) -> None:
        """Open the writer (rank 0, once), purging what a killed run wrote after its
        checkpoint."""
        if idist.get_rank() != 0 or self.writer is not None:
            return
        purge = engine.state.iteration + 1 if engine.state.iteration > 0 else None
        self.writer = ScalarEventWriter(self.log_dir, purge_step=purge)

    def write(self, name: str, value: float, step: int) -> None:
        """History listener: queue ``name = value`` at the training iteration."""
        if self.writer is not None:
            # one x axis for all scalars: the training iteration
            self.writer.add_scalar(name, value, self.engine.state.iteration)

    def flush(self, _: Engine | None = None) -> None:
        """Write what is queued (the event file then holds every scalar so far)."""
        if self.writer is not None:
            self.writer.flush()

    def close(self, _: Engine | None = None) -> None:
        """Flush and close the writer (a later ``STARTED`` opens a new one)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ScalarEventWriter:
    """TensorBoard scalars in an event file: queued as numbers, encoded at :meth:`flush`.

    tensorboardX's ``SummaryWriter`` hands events to a logging thread through a queue,
    and its ``flush()`` does not wait for that queue: an event added just before a
    checkpoint could still be in flight when a SIGKILL lands, and the resumed run
    (which purges only what comes after its checkpoint) would miss it. Here
    :meth:`add_scalar` only queues ``(tag, value, step, time)``; :meth:`flush` (before
    each checkpoint, every ``flush_secs`` and every ``max_queue`` scalars) encodes the
    records and writes them to the file in one call (after which a SIGKILL loses none);
    :meth:`close` fsyncs. No fsync per flush (issue 16): on a 2-core machine a
    background fsync still cost the training thread ~0.3 ms, and the event file is a
    view of the History, whose journal is fsynced. Encoding a scalar costs ~10 us
    (protobuf, two CRCs): paid in one batch, not between two training steps. The record format, the
    file name and the purge marker are tensorboardX's and TensorBoard's own.

    Args:
        log_dir: Directory of the event file (created).
        purge_step: A resumed run's first step: TensorBoard hides events at this step
            and later that an earlier file holds.
        flush_secs: At most this long between flushes while scalars are added.
        max_queue: At most this many scalars queued before a flush.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        purge_step: int | None = None,
        flush_secs: float = 30.0,
        max_queue: int = 10_000,
    ) -> None:
        if not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue={max_queue!r} is not allowed: expected an integer >= 1")
        # imported here, not at the top: tensorboardX (protobuf) adds ~0.2 s to every
        # ``import ignitrain``, and only a run with TensorBoard on needs it
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.record_writer import masked_crc32c
        from tensorboardX.summary import _clean_tag

        self._event, self._summary, self._crc = Event, Summary, masked_crc32c
        self._clean_tag = _clean_tag
        self._tags: dict[str, str] = {}  # tag as given -> tag as written (cleaned once)
        os.makedirs(log_dir, exist_ok=True)
        # tensorboardX's name (seconds, host), plus nanoseconds: a run resumed within the
        # same second gets its own file, sorted after the killed run's (TensorBoard reads
        # files in name order)
        now = time.time()
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{time.time_ns()}"
        self.path = os.path.join(str(log_dir), name)
        self._fh = open(self.path, "wb")  # noqa: SIM115 -- closed by close()
        head = [Event(wall_time=now, file_version="brain.Event:2")]
        if purge_step is not None:
            start = SessionLog(status=SessionLog.START)
            head.append(Event(wall_time=now, step=purge_step, session_log=start))
        self._write_events(head)
        self._queue: list[tuple[str, float, int, float]] = []
        self.flush_secs = flush_secs
        self.max_queue = max_queue
        self._flushed_at = time.monotonic()

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """Queue ``tag = value`` at ``step`` (written at the next :meth:`flush`)."""
        self._queue.append((tag, float(value), int(step), time.time()))
        if len(self._queue) >= self.max_queue or (
            time.monotonic() - self._flushed_at >= self.flush_secs
        ):
            self.flush()

    def flush(self) -> None:
        """Encode and write the queued scalars to the file (no fsync: see the class).

        Returns at once when nothing was queued since the last call (a flush before
        each of several checkpoints in one epoch).
        """
        queue, self._queue = self._queue, []
        self._flushed_at = time.monotonic()
        if queue:
            event, scalar = self._event, self._scalar
            self._write_events(
                event(wall_time=wall, step=step, summary=scalar(tag, value))
                for tag, value, step, wall in queue
            )

    def close(self) -> None:
        """Flush, fsync and close the file."""
        self.flush()
        try:
            os.fsync(self._fh.fileno())
        finally:
            self._fh.close()

    def _scalar(self, tag: str, value: float) -> Any:
        # The Summary tensorboardX's ``summary.scalar(tag, value)`` builds (the same
        # bytes) without its per-call numpy conversion and tag regex: ~1.5 us instead
        # of ~7 per scalar. The tag is cleaned by tensorboardX's own rule, once per tag.
        clean = self._tags.get(tag)
        if clean is None:
            clean = self._tags[tag] = self._clean_tag(tag)
        return self._summary(value=[self._summary.Value(tag=clean, simple_value=value)])

    def _write_events(self, events: Any) -> None:
        crc, chunks = self._crc, []
        for ev in events:
            data = ev.SerializeToString()
            header = struct.pack("Q", len(data))
            chunks += (header, struct.pack("I", crc(header)), data, struct.pack("I", crc(data)))
        if chunks:
            self._fh.write(b"".join(chunks))
            self._fh.flush()  # to the OS: a SIGKILL after this loses none


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
            # latest_step, not steps(): no copy of a series that grows with the run
            if (
                history.latest_step(name) == epoch
                and "/" in name
                and not name.startswith("train/batch")
            ):
                parts.append(f"{name} {history.latest(name):.4g}")
        if "lr" in history:
            parts.append(f"lr {history.latest('lr'):.3g}")
        parts.append(f"{engine.state.times.get('EPOCH_COMPLETED') or 0:.1f}s")
        log.info(" | ".join(parts))

    engine.add_event_handler(Events.EPOCH_COMPLETED, summary)
