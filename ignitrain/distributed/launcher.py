"""Forming the job: :func:`launch` on one process, on spawned processes, or under torchrun.

:func:`launch` is a thin layer over :class:`ignite.distributed.Parallel`'s worker set-up
(see :mod:`ignitrain.distributed` for the three ways a script runs), plus
:func:`free_port` for the rendezvous of spawned processes.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import math
import os
import pickle
import socket
import threading
import warnings
from collections.abc import Callable
from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed as dist

# Ignite's own per-process set-up of a spawned worker (rank environment, process group,
# fn, finalize): idist.Parallel runs it too, and there is no public name for it.
from ignite.distributed.comp_models.native import _NativeDistModel

from ignitrain import spawn
from ignitrain.config import TrainConfig
from ignitrain.errors import is_count, is_number, suggest

__all__ = ["free_port", "launch"]

logger = logging.getLogger("ignitrain")

# Environment variables every torchrun (torch.distributed.run) worker gets.
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")

# Ports handed out by free_port() in this process: two launches started at the same
# moment in one process must not get the same port back from the OS.
_GIVEN_PORTS: set[int] = set()
_GIVEN_PORTS_LOCK = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free now and not handed out before here.

    The OS picks it (bind to port 0). Another program could still take it before the
    process group binds it; the window is milliseconds, unlike a fixed default port
    (Ignite spawns on 2222), which collides whenever two jobs run at once.
    """
    with _GIVEN_PORTS_LOCK:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
            if port not in _GIVEN_PORTS:
                _GIVEN_PORTS.add(port)
                return port
    raise RuntimeError(f"Could not find a free TCP port on {host}.")


def _check_nproc(nproc_per_node: Any) -> int | None:
    if nproc_per_node is None:
        return None
    if not is_count(nproc_per_node):
        raise TypeError(
            f"Argument nproc_per_node must be an int >= 1 or None, got {nproc_per_node!r}."
        )
    if nproc_per_node < 1:
        raise ValueError(f"Argument nproc_per_node must be >= 1, got {nproc_per_node!r}.")
    return int(nproc_per_node)


def _check_backend(backend: Any) -> str | None:
    if backend is None:
        return None
    available = idist.available_backends()
    if not isinstance(backend, str):
        raise TypeError(f"Argument backend must be one of {available} or None, got {backend!r}.")
    if backend not in available:
        hint = " (nccl needs a CUDA build of torch and a GPU)" if backend == "nccl" else ""
        raise ValueError(
            f"Argument backend={backend!r} is not available here{hint}; "
            f"available: {available}.{suggest(backend, available)}"
        )
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("Argument backend='nccl' needs a GPU, but CUDA is not available.")
    return backend


def _check_timeout(timeout: Any) -> datetime.timedelta | None:
    if timeout is None:
        return None
    if isinstance(timeout, datetime.timedelta):
        seconds = timeout.total_seconds()
    elif is_number(timeout):
        seconds = float(timeout)
    else:
        raise TypeError(
            f"Argument timeout must be seconds (a number > 0), a timedelta or None, "
            f"got {timeout!r}."
        )
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"Argument timeout must be > 0 seconds, got {timeout!r}.")
    return datetime.timedelta(seconds=seconds)


def _check_port(master_port: Any) -> int | None:
    if master_port is None:
        return None
    if not is_count(master_port):
        raise TypeError(f"Argument master_port must be an int in 1..65535, got {master_port!r}.")
    if not 1 <= master_port <= 65535:
        raise ValueError(f"Argument master_port must be in 1..65535, got {master_port!r}.")
    return int(master_port)


def _check_threads(threads: Any) -> int | None:
    if threads is None:
        return None
    if not is_count(threads):
        raise TypeError(
            f"Argument threads_per_process must be an int >= 1 or None, got {threads!r}."
        )
    if threads < 1:
        raise ValueError(f"Argument threads_per_process must be >= 1, got {threads!r}.")
    return int(threads)


def _default_backend() -> str:
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def _in_torchrun() -> bool:
    return all(name in os.environ for name in _TORCHRUN_ENV)


def _group_exists() -> bool:
    return dist.is_available() and dist.is_initialized()


def _finalize_at_exit() -> None:
    if _group_exists():
        spawn.teardown_process()


def _join_torchrun(backend: str, timeout: datetime.timedelta | None) -> None:
    """Form the default process group from torchrun's environment, for this process's life.

    The group is not destroyed when ``fn`` returns: torch cannot reliably form a second
    default group in a torchrun worker (group names restart at 0 and the rendezvous
    keys of the first group are still in torchrun's store, so a rank can read a peer's
    stale address and fail to connect; seen with torch 2.13). A later ``launch`` in
    the same process runs in this group, and it is destroyed at exit.
    """
    # Parallel.__enter__ calls idist.initialize(backend) without a timeout (Ignite
    # 0.5.5), so the group is initialised here with the same call plus the timeout.
    init_kwargs = {} if timeout is None else {"timeout": timeout}
    idist.initialize(backend, **init_kwargs)
    atexit.unregister(_finalize_at_exit)  # registered once, however many launches
    atexit.register(_finalize_at_exit)


def _warn_if_nproc_differs(nproc_per_node: int | None) -> None:
    local_world = os.environ.get("LOCAL_WORLD_SIZE")
    if nproc_per_node is not None and local_world is not None:
        if nproc_per_node != int(local_world):
            warnings.warn(
                f"launch(nproc_per_node={nproc_per_node}) is ignored under torchrun, "
                f"which started {local_world} processes on this node.",
                stacklevel=3,
            )


def _spawn(
    fn: Callable,
    args: tuple,
    kwargs: dict,
    *,
    backend: str,
    nproc_per_node: int,
    timeout: datetime.timedelta | None,
    master_port: int | None,
    threads: int | None,
) -> None:
    try:
        pickle.dumps(fn)
    except Exception as err:
        raise TypeError(
            f"Argument fn={fn!r} cannot be sent to spawned processes: define it at the top "
            "level of an importable module (not a lambda or a nested function)."
        ) from err
    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        threads = spawn.threads_per_process(nproc_per_node)
    worker = spawn.SpawnedWorker(
        fn, num_threads=threads, logging_setup=spawn.LoggingSetup.of_this_process()
    )
    port = master_port if master_port is not None else free_port()
    # idist.Parallel (Ignite 0.5.5) joins with torch's ProcessContext.join(), which
    # SIGTERMs the other ranks the moment one exits non-zero: a rank that exits 143
    # after a preemption gets its peers killed during their own preemption exit, and
    # the launcher reports exit 1. Nor does it forward a signal sent to the launcher
    # (the ranks die of the SIGINT torch's PR_SET_PDEATHSIG sends when the launcher
    # dies). So the processes start here, with Ignite's own worker set-up (rank
    # environment, process group with `timeout`, fn, finalize), and
    # spawn.join_workers() joins them.
    context = torch.multiprocessing.start_processes(
        _NativeDistModel._dist_worker_task_fn,
        nprocs=nproc_per_node,
        args=(
            backend,
            worker,
            args,
            kwargs,
            nproc_per_node,  # world size: one node
            nproc_per_node,
            0,  # node rank
            "127.0.0.1",
            port,
            "env://",
            {} if timeout is None else {"timeout": timeout},
        ),
        join=False,
        start_method="spawn",
    )
    logger.info(
        "launch: %d processes (%s, port %d, %s intra-op thread(s) each)",
        nproc_per_node,
        backend,
        port,
        threads or "default",
    )
    grace = (timeout or spawn.default_timeout()).total_seconds()
    with spawn.forward_signals(context.pids()):
        spawn.join_workers(context, preempt_grace_s=grace)


def _timeout_from_config(args: tuple, kwargs: dict) -> datetime.timedelta | None:
    """``dist_timeout`` of the first ``TrainConfig`` among ``fn``'s arguments, if any."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, TrainConfig):
            return datetime.timedelta(seconds=float(value.dist_timeout))
    return None


def launch(
    fn: Callable[..., Any],
    *args: Any,
    backend: str | None = None,
    nproc_per_node: int | None = None,
    timeout: float | datetime.timedelta | None = None,
    master_port: int | None = None,
    threads_per_process: int | None = None,
    **kwargs: Any,
) -> None:
    """Call ``fn(local_rank, *args, **kwargs)`` in every process of the job, as
    ``idist.Parallel.run`` does, choosing how the job is formed from the environment.

    1. Started by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set): this
       process joins torchrun's group (``backend`` default ``"nccl"`` with CUDA, else
       ``"gloo"``) and runs ``fn``. The group stays until the process exits, so a
       second ``launch`` runs in it (torch cannot reliably re-form it in a torchrun
       worker). ``nproc_per_node`` is ignored: torchrun started the processes.
    2. A process group already exists (made by the caller or by an earlier
       ``launch`` under torchrun): ``fn`` runs in it; ``backend`` and ``timeout`` do not
       change it.
    3. ``nproc_per_node > 1``: spawns that many processes on ``127.0.0.1`` and a free
       port (``master_port`` to fix one), with Ignite's worker set-up (as
       ``idist.Parallel`` spawns); ``backend`` default as above. Each process gets
       ``threads_per_process`` intra-op threads (default: this machine's cores divided
       by ``nproc_per_node``, as torchrun's ``OMP_NUM_THREADS=1`` does, unless
       ``OMP_NUM_THREADS`` is set) and the launcher's console logging (so rank 0 prints
       the epoch lines). Returns when all are done.
    4. Otherwise: ``fn(0, *args, **kwargs)`` runs here, with no process group.

    A rank that raises ends the job: spawned siblings are terminated and the error
    is raised here (``torch.multiprocessing.ProcessRaisedException``, whose message
    holds the failing rank's traceback); under torchrun, torchrun stops the others.

    Preemption with spawned processes: a SIGTERM or SIGUSR1 that reaches the launcher
    (alone, or with its whole process group, as Slurm and Kubernetes send it) is passed
    on to every rank; the ranks checkpoint at the same iteration and exit with status
    143, and ``launch`` raises ``SystemExit(143)`` (for SIGUSR1 too: one status a
    scheduler requeues on). The same when the signal reaches one rank only. The other
    ranks get the process-group timeout to finish before they are stopped.

    Spawned processes start a fresh interpreter (the ``spawn`` method), so ``fn`` must
    be importable (defined at module top level) and the script must call ``launch``
    under ``if __name__ == "__main__":``.

    Args:
        fn: The function to run; its first argument is the local rank.
        *args: Positional arguments for ``fn``.
        backend: ``"gloo"``, ``"nccl"`` (or another of ``idist.available_backends()``);
            ``None`` picks one. Without ``torchrun`` and with one process, no group is
            made whatever the backend.
        nproc_per_node: Processes to spawn on this machine.
        timeout: Process-group timeout in seconds (or a ``timedelta``): a collective
            that waits longer, e.g. for a rank that died, raises instead of hanging.
            ``None``: the ``dist_timeout`` of the first :class:`~ignitrain.TrainConfig`
            passed to ``fn`` (positionally or by keyword, not nested in another object),
            else torch's default (30 minutes).
        master_port: Port of the rendezvous when spawning (default: a free one).
        threads_per_process: Intra-op threads of each spawned process (default: cores
            divided by ``nproc_per_node``).
        **kwargs: Keyword arguments for ``fn``.

    Raises:
        TypeError: An argument has the wrong type, or ``fn`` cannot be spawned.
        ValueError: An argument has a wrong value (unknown backend, ``nproc_per_node``
            below 1, ``timeout`` not positive...).
        SystemExit: Spawned ranks were preempted (status 143).

    Example:
        >>> def training(local_rank, config):
        ...     print(idist.get_rank(), idist.get_world_size())
        >>> launch(training, {"lr": 0.1})  # doctest: +SKIP
        0 1
        >>> launch(training, {"lr": 0.1}, nproc_per_node=2, timeout=60)  # doctest: +SKIP
    """
    if not callable(fn):
        raise TypeError(f"Argument fn must be callable, got {fn!r}.")
    backend = _check_backend(backend)
    nproc_per_node = _check_nproc(nproc_per_node)
    timeout = _check_timeout(timeout)
    if timeout is None:
        timeout = _timeout_from_config(args, kwargs)
    master_port = _check_port(master_port)
    threads_per_process = _check_threads(threads_per_process)

    if _in_torchrun() and not _group_exists():
        _warn_if_nproc_differs(nproc_per_node)
        _join_torchrun(backend or _default_backend(), timeout)
    if _group_exists():
        fn(idist.get_local_rank(), *args, **kwargs)
    elif nproc_per_node is not None and nproc_per_node > 1:
        _spawn(
            fn,
            args,
            kwargs,
            backend=backend or _default_backend(),
            nproc_per_node=nproc_per_node,
            timeout=timeout,
            master_port=master_port,
            threads=threads_per_process,
        )
    else:
        fn(0, *args, **kwargs)
