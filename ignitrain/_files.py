"""Writing files so that a crash never leaves a partial one, and writing them off-thread.

One place for the temp-file-fsync-rename dance every output of a run goes through
(config, History, reports, records, checkpoints) and for the one background writer
thread that takes fsyncs and slow writes off the training thread.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = [
    "BackgroundWriter",
    "commit_temp",
    "fsync_dir",
    "fsync_file",
    "remove_quietly",
    "temp_path",
    "write_atomic",
]


def temp_path(path: Path) -> Path:
    """A fresh hidden temp name next to ``path`` (``.{name}.{random}.tmp``)."""
    # Same directory, so os.replace is a rename within one filesystem (atomic).
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def remove_quietly(path: Path) -> None:
    """Remove ``path`` if it exists; never raise."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def fsync_dir(dirname: Path) -> None:
    """Make the directory entries of ``dirname`` (a rename) durable."""
    # The rename itself lives in the directory entry: without this a power loss can
    # undo it. Some platforms (Windows) cannot open a directory; nothing to do there.
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk."""
    fd = os.open(path, os.O_RDWR)  # Windows needs write access to flush
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_temp(tmp: Path, path: Path, *, synced: bool = False) -> None:
    """Make a finished temp file durable, rename it onto ``path``, make the rename durable.

    Kept apart from the write so a background writer can run it off the training
    thread. ``synced``: the temp file's data is already on disk (a hard link to a
    committed file). On error the temp file is removed and the error re-raised.
    """
    try:
        if not synced:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes | str, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` so that ``path`` is never a partial file.

    Args:
        path: The final file name; its directory is created if missing.
        data: The whole content (``str`` is written as UTF-8).
        durable: fsync the file and its directory (off only for files that are
            rewritten often and rebuilt from a durable source).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: The write, fsync or rename failed (e.g. ``ENOSPC``); ``path`` keeps its
            previous content and no temp file is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    payload = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as fh:
            fh.write(payload)
    except BaseException:
        remove_quietly(tmp)
        raise
    if durable:
        commit_temp(tmp, path)
    else:
        try:
            os.replace(tmp, path)
        except BaseException:
            remove_quietly(tmp)
            raise
    return path


class BackgroundWriter:
    """Runs calls on one worker thread, in order; an error surfaces at the next call."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._again: tuple[Callable[..., Any], tuple] | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` after the previous call (waiting for it first)."""
        self.wait()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="ignitrain-writer")
        self._pending = self._executor.submit(fn, *args)

    def submit_coalesced(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` soon, without waiting: while a call is still running, it
        runs once more when that one ends (an fsync each epoch must not wait for the
        last one on a slow disk; one later fsync covers every write before it)."""
        with self._lock:
            if self._pending is not None and not self._pending.done():
                self._again = (fn, args)
                return
        self.submit(self._run_until_settled, fn, args)

    def _run_until_settled(self, fn: Callable[..., Any], args: tuple) -> None:
        while True:
            fn(*args)
            with self._lock:
                again, self._again = self._again, None
            if again is None:
                return
            fn, args = again

    def wait(self) -> None:
        """Block until the calls so far are done; raise their error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()
        with self._lock:
            again, self._again = self._again, None
        if again is not None:  # queued just as the worker finished
            again[0](*again[1])
