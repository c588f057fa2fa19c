"""The processes :func:`ignitrain.launch` spawns: their set-up, their signals, their join.

``launch(fn, nproc_per_node=N)`` starts N processes with Ignite's own worker set-up
(``_NativeDistModel._dist_worker_task_fn``: rank environment, process group, ``fn``,
``idist.finalize()``) and this module around it:

1. :class:`SpawnedWorker` wraps ``fn`` in each process: ``cores // N`` intra-op threads
   (torchrun sets ``OMP_NUM_THREADS=1``; Ignite's spawn sets nothing, and 2 processes
   with 2 threads each on 2 cores oversubscribe the CPU), the launcher's logging set-up
   (a spawned interpreter starts without it, so rank 0 printed no epoch lines), and a
   teardown in ``finally`` that destroys the process group
   also when ``fn`` leaves by an exception or ``SystemExit`` (a preempted rank).
2. :func:`forward_signals` sends a SIGTERM/SIGUSR1 that reaches the launcher to every
   rank, where the preemption handler checkpoints; without it the launcher dies and torch's
   ``PR_SET_PDEATHSIG`` kills the ranks with SIGINT, checkpoint-less.
3. :func:`join_workers` waits for the ranks. A rank that exits with a preemption status
   (143, ``128 + signum``, or killed by a preemption signal) leaves the others time to
   finish their own preemption exit (torch's ``ProcessContext.join`` SIGTERMs them at
   once), and the launcher then exits 143 (``PREEMPTED_EXIT_STATUS``, for SIGUSR1 too: one
   status a scheduler requeues on). A rank that fails otherwise
   stops the others and raises torch's ``ProcessRaisedException`` with its traceback, as
   before.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import logging
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed as dist
from torch.distributed import default_pg_timeout
from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

from ignitrain.errors import is_count
from ignitrain.signals import DEFAULT_SIGNALS, PREEMPTED_EXIT_STATUS

__all__ = [
    "PREEMPTED_EXIT_STATUS",
    "PREEMPTION_SIGNALS",
    "LoggingSetup",
    "SpawnedWorker",
    "exit_status",
    "forward_signals",
    "is_preemption_exit",
    "join_workers",
    "threads_per_process",
]

PREEMPTION_SIGNALS: tuple[int, ...] = DEFAULT_SIGNALS

# What a rank that is still shutting down after a failed peer gets before SIGKILL.
_STOP_GRACE_S = 30.0

logger = logging.getLogger("ignitrain")


def threads_per_process(nproc: int) -> int:
    """Intra-op threads for each of ``nproc`` processes: the cores this process may use,
    divided among them (at least 1)."""
    if nproc < 1:
        raise ValueError(f"Argument nproc must be >= 1, got {nproc!r}.")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // nproc)


# -- logging --------------------------------------------------------------------------

_STREAMS = {"stderr": lambda: sys.stderr, "stdout": lambda: sys.stdout}


@dataclass(frozen=True)
class _HandlerSpec:
    stream: str
    level: int
    fmt: str | None
    datefmt: str | None


@dataclass(frozen=True)
class LoggingSetup:
    """The launcher's console logging for the root and ``"ignitrain"`` loggers, as plain
    data that a spawned process can rebuild (handlers themselves do not pickle)."""

    levels: dict[str, int] = field(default_factory=dict)
    handlers: dict[str, tuple[_HandlerSpec, ...]] = field(default_factory=dict)
    propagate: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def of_this_process(cls) -> LoggingSetup:
        levels, handlers, propagate = {}, {}, {}
        for name in ("", "ignitrain"):
            log = logging.getLogger(name)
            levels[name] = log.level
            propagate[name] = log.propagate
            handlers[name] = tuple(_console_specs(log.handlers))
        return cls(levels, handlers, propagate)

    def apply(self) -> None:
        """Rebuild the console handlers in this (fresh) process; existing ones stay."""
        for name, level in self.levels.items():
            log = logging.getLogger(name)
            if log.handlers:  # configured here already (e.g. by fn's module at import)
                continue
            for spec in self.handlers.get(name, ()):
                handler = logging.StreamHandler(_STREAMS[spec.stream]())
                handler.setLevel(spec.level)
                handler.setFormatter(logging.Formatter(spec.fmt, spec.datefmt))
                log.addHandler(handler)
            if level != logging.NOTSET:
                log.setLevel(level)
            log.propagate = self.propagate.get(name, True)


def _console_specs(handlers: Iterable[logging.Handler]) -> Iterator[_HandlerSpec]:
    for handler in handlers:
        stream = getattr(handler, "stream", None)
        name = next((n for n, get in _STREAMS.items() if stream is get()), None)
        if name is None or type(handler) is not logging.StreamHandler:
            continue  # files, sockets, pytest's capture: not rebuilt
        formatter = handler.formatter
        yield _HandlerSpec(
            name,
            handler.level,
            getattr(formatter, "_fmt", None),
            getattr(formatter, "datefmt", None),
        )


# -- the worker -----------------------------------------------------------------------


class SpawnedWorker:
    """``fn`` as one spawned process runs it: threads, logging, then a clean teardown.

    Picklable when ``fn`` is (a top-level function): it travels to the spawned process.

    Args:
        fn: The user's ``fn(local_rank, *args, **kwargs)``.
        num_threads: Intra-op threads (``torch.set_num_threads``); ``None`` keeps torch's
            default (which honours ``OMP_NUM_THREADS``).
        logging_setup: Console logging to rebuild, or ``None``.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        num_threads: int | None = None,
        logging_setup: LoggingSetup | None = None,
    ):
        if not callable(fn):
            raise TypeError(f"Argument fn must be callable, got {fn!r}.")
        if num_threads is not None and not (is_count(num_threads) and num_threads >= 1):
            raise ValueError(
                f"Argument num_threads must be an int >= 1 or None, got {num_threads!r}."
            )
        self.fn = fn
        self.num_threads = num_threads
        self.logging_setup = logging_setup

    def __call__(self, local_rank: int, *args: Any, **kwargs: Any) -> Any:
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        if self.logging_setup is not None:
            self.logging_setup.apply()
        try:
            return self.fn(local_rank, *args, **kwargs)
        finally:
            teardown_process()


def teardown_process() -> None:
    """Free what the run left alive, then destroy this process's process group.

    Found when bf16 + 2 processes aborted at exit ("terminate called without an active
    exception"): when ``fn`` returns, the preemption handler is still the process's
    SIGTERM/SIGUSR1 handler, and through it the whole trainer stays reachable -- the DDP
    model, its reducer and the gloo process group it holds. ``destroy_process_group``
    then only unregisters the group; the C++ objects and their threads die during
    interpreter shutdown, in whatever order finalisation reaches them. So: (1) put the
    default signal handlers back (this process is about to exit), (2) collect the
    garbage so DDP and its reducer are freed while the interpreter is whole, (3)
    destroy the group (``idist.finalize()`` also resets Ignite's model, so Ignite's own
    ``finalize()`` after ``fn`` is a no-op), (4) collect again, freeing the group.

    Runs in ``finally``, so a rank leaving by ``SystemExit`` (preemption) or an
    exception tears down too (Ignite's worker finalizes only after a normal return).
    """
    if threading.current_thread() is threading.main_thread():
        for signum in PREEMPTION_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        idist.finalize()
    gc.collect()


# -- the launcher side ------------------------------------------------------------------


def is_preemption_exit(code: int | None, signals: Iterable[int] = PREEMPTION_SIGNALS) -> bool:
    """Whether a process exit code says the process stopped for a preemption signal:
    143 (the preemption handler's exit), ``128 + signum`` (a shell's, or an older
    handler's) or ``-signum`` (killed by it)."""
    if code is None:
        return False
    chosen = {int(s) for s in signals}
    return code == PREEMPTED_EXIT_STATUS or code in {128 + s for s in chosen} or -code in chosen


def exit_status(code: int) -> int:
    """A child's exit code as a shell exit status: ``-signum`` becomes ``128 + signum``."""
    return 128 - code if code < 0 else code


@contextlib.contextmanager
def forward_signals(
    pids: Iterable[int], signals: Iterable[int] = PREEMPTION_SIGNALS
) -> Iterator[list[int]]:
    """While inside, send each of ``signals`` that reaches this process on to ``pids``.

    Yields the list of signals received (in order). Outside the main thread (where Python
    cannot install handlers) nothing is installed. Each signal is forwarded every time
    it arrives: a rank that is already saving ignores repeats, one that has saved may die
    of it, its checkpoint is on disk.
    """
    received: list[int] = []
    targets = [int(p) for p in pids]
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {s: signal.signal(s, forward) for s in signals}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def join_workers(context: Any, *, preempt_grace_s: float) -> None:
    """Wait for the processes of a ``torch.multiprocessing`` ``ProcessContext``.

    Returns when all exited 0. When one exits with a preemption status, the others get
    ``preempt_grace_s`` seconds to exit by themselves (they stop at the same iteration
    and rank 0 writes the checkpoint), then ``SystemExit(143)`` is raised. When
    one fails otherwise, the others are stopped (SIGTERM, then SIGKILL after 30 s) and
    its error is raised as torch's ``spawn`` raises it.
    """
    processes = context.processes
    deadline: float | None = None
    try:
        while True:
            codes = [p.exitcode for p in processes]
            failed = [
                i for i, c in enumerate(codes) if c not in (None, 0) and not is_preemption_exit(c)
            ]
            if failed:
                _stop(processes)
                _raise_failure(context, failed[0])
            alive = [p for p, c in zip(processes, codes, strict=True) if c is None]
            if not alive:
                break
            if deadline is None and any(is_preemption_exit(c) for c in codes):
                deadline = time.monotonic() + preempt_grace_s
            wait_s = None if deadline is None else deadline - time.monotonic()
            if wait_s is not None and wait_s <= 0:
                logger.warning(
                    "Preempted: %d process(es) still running %.0f s after another one "
                    "exited; stopping them",
                    len(alive),
                    preempt_grace_s,
                )
                _stop(processes)
                break
            multiprocessing.connection.wait([p.sentinel for p in alive], timeout=wait_s)
    finally:
        _stop(processes)  # an interrupt (Ctrl-C) in this loop leaves no orphans
    if any(is_preemption_exit(p.exitcode) for p in processes):
        raise SystemExit(PREEMPTED_EXIT_STATUS)


def _stop(processes: list[Any]) -> None:
    alive = [p for p in processes if p.is_alive()]
    for process in alive:
        process.terminate()
    end = time.monotonic() + _STOP_GRACE_S
    for process in alive:
        process.join(max(0.0, end - time.monotonic()))
    for process in alive:
        if process.is_alive():
            process.kill()
            process.join()


def _raise_failure(context: Any, index: int) -> None:
    # As torch.multiprocessing.ProcessContext.join reports a failed process.
    process = context.processes[index]
    error_file = context.error_files[index]
    if os.access(error_file, os.R_OK):
        with open(error_file, "rb") as fh:
            trace = pickle.load(fh)  # written by torch's _wrap in our own child
        msg = f"\n\n-- Process {index:d} terminated with the following error:\n{trace}"
        raise ProcessRaisedException(msg, index, process.pid)
    code = process.exitcode
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        raise ProcessExitedException(
            f"process {index:d} terminated with signal {name}",
            error_index=index,
            error_pid=process.pid,
            exit_code=code,
            signal_name=name,
        )
    raise ProcessExitedException(
        f"process {index:d} terminated with exit code {code:d}",
        error_index=index,
        error_pid=process.pid,
        exit_code=code,
    )


def default_timeout() -> datetime.timedelta:
    """torch's process-group timeout when none is given (30 minutes for gloo)."""
    return default_pg_timeout
