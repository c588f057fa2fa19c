"""One run per output directory: an advisory lock held for the whole run, and no silent
mixing of a new run into an old one.

:func:`hold_output_dir` wraps ``Trainer.train()``:

1. The writing rank (rank 0) takes ``fcntl.flock`` on ``output_dir/.lock`` without
   waiting and writes its PID there. A second run into the directory fails at once with
   :class:`OutputDirLockedError` naming the holder's PID. The kernel drops the lock when
   the holder dies, SIGKILL included, so a stale ``.lock`` file never blocks.
2. A new run (``resume=None`` and a trainer that has not trained or resumed yet) into a
   directory that already holds a run (``history.json`` or a file in ``checkpoints/``)
   raises :class:`~ignitrain.config.ConfigError`, unless ``overwrite=True`` (the old
   run's checkpoints, history, report and TensorBoard logs are removed first) or
   ``resume="latest"`` -- the rule the CLI applies with ``--overwrite``.
3. Under a process group rank 0's verdict is broadcast, so every rank raises the same
   error at the same point instead of the others waiting in the first collective.

The lock is released when ``train()`` returns or raises (``SystemExit`` of a preemption
included). It is advisory: only ignitrain runs honour it; ``flock`` on network file
systems (NFS) is only as good as the server's lock support.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ignite.distributed as idist

from ignitrain.distributed import broadcast_object
from ignitrain.errors import ConfigError

__all__ = [
    "LOCK_NAME",
    "RUN_DIRS",
    "RUN_FILES",
    "OutputDirLockedError",
    "RunLock",
    "existing_run",
    "hold_output_dir",
    "remove_run",
]

LOCK_NAME = ".lock"

# What a run leaves in output_dir (the CLI's --overwrite removes the same).
RUN_FILES = (
    "history.json",
    "history.jsonl",
    "report.html",
    "evaluation.json",
    "run.json",
    "profile.csv",
)
# the two files whose presence means a run was here (the journal alone: a killed run)
_HISTORY_FILES = RUN_FILES[:2]
RUN_DIRS = ("checkpoints", "tb")

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, the existing-run rule still holds
    fcntl = None  # type: ignore[assignment]


class OutputDirLockedError(RuntimeError):
    """Another live run holds the output directory's lock."""


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``output_dir/.lock`` with the holder's PID.

    Args:
        output_dir: The run's directory (created if missing).

    Example:
        >>> lock = RunLock("runs/digits").acquire()  # doctest: +SKIP
        >>> lock.release()  # doctest: +SKIP
    """

    def __init__(self, output_dir: str | os.PathLike):
        if not isinstance(output_dir, (str, os.PathLike)):
            raise TypeError(f"Argument output_dir={output_dir!r} is not allowed: expected a path")
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock now or raise :class:`OutputDirLockedError` naming the holder."""
        if self.held:
            return self
        self.output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _read_pid(fd)
                os.close(fd)
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise OutputDirLockedError(
                    f"output_dir {str(self.output_dir)!r} is in use by another run "
                    f"(PID {holder or 'unknown'}, lock {str(self.path)!r}). Wait for it to "
                    "finish, stop it, or train into another output_dir"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock. The file stays: removing it would let a third run lock a new
        file while a second one still waits on the old one."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text)
    except (OSError, ValueError):
        return None


def existing_run(output_dir: str | os.PathLike) -> list[str]:
    """What of a previous run ``output_dir`` holds (``[]`` when nothing)."""
    root = Path(output_dir)
    found = [name for name in _HISTORY_FILES if (root / name).exists()][:1]
    checkpoints = root / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        found.append("checkpoints/")
    return found


def remove_run(output_dir: str | os.PathLike) -> None:
    """Remove a previous run's checkpoints, history, report and TensorBoard logs."""
    root = Path(output_dir)
    for name in RUN_FILES:
        (root / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(root / name, ignore_errors=True)


_ERRORS: dict[str, type[Exception]] = {"locked": OutputDirLockedError, "exists": ConfigError}


def _verdict(trainer: Any, lock: RunLock) -> tuple[str, str] | None:
    """Rank 0: take the lock and apply the existing-run rule; ``(kind, message)`` of the
    error to raise, or ``None``."""
    config = trainer.config
    try:
        lock.acquire()
    except OutputDirLockedError as err:
        return "locked", str(err)
    continuing = config.resume is not None or trainer.engine.state.iteration > 0
    found = [] if continuing else existing_run(config.output_dir)
    if found and not config.overwrite:
        lock.release()
        return "exists", (
            f"TrainConfig.output_dir={config.output_dir!r} already holds a run "
            f"({', '.join(found)}): pass resume='latest' to continue it, overwrite=True to "
            "replace it, or another output_dir"
        )
    if found:
        remove_run(config.output_dir)
    return None


@contextlib.contextmanager
def hold_output_dir(trainer: Any) -> Iterator[None]:
    """Hold ``trainer.config.output_dir`` for the ``with`` block (see the module doc).

    Without ``output_dir`` nothing is locked. Every rank must enter it (a broadcast).

    Raises:
        OutputDirLockedError: Another live run holds the directory.
        ConfigError: The directory holds a run and neither ``resume`` nor ``overwrite``
            says what to do with it.
    """
    if trainer.config.output_dir is None:
        yield
        return
    lock = RunLock(trainer.config.output_dir)
    verdict = _verdict(trainer, lock) if idist.get_rank() == 0 else None
    verdict = broadcast_object(verdict)
    if verdict is not None:
        kind, message = verdict
        raise _ERRORS[kind](message)
    try:
        yield
    finally:
        lock.release()
