"""A directory of checkpoints written: background commit, deferred eviction, ``latest`` pointer."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist

from ignitrain._files import (
    BackgroundWriter,
    commit_temp,
    fsync_dir,
    fsync_existing,
    remove_quietly,
    temp_path,
    write_atomic,
)
from ignitrain.errors import is_count
from ignitrain.handlers.checkpoint.files import (
    IN_MEMORY_LIMIT,
    serialize,
    tensor_bytes,
    write_temp,
)
from ignitrain.handlers.checkpoint.format import as_payload
from ignitrain.handlers.checkpoint.listing import CheckpointDir, Entry, as_int

__all__ = ["CheckpointStore", "best_tag", "safe_tag_part"]


def _named(err: OSError, path: Path) -> OSError:
    """``err`` as an ``OSError`` of the same errno whose message names ``path``.

    A full disk fails inside ``f.write``, whose ``OSError`` names no file at all (or
    only the random temp name): the caller is told which checkpoint was lost.
    """
    named = OSError(err.errno, f"{err.strerror or err} (writing the checkpoint)", str(path))
    named.__cause__ = err
    return named


def safe_tag_part(text: str) -> str:
    """``text`` with characters other than letters, digits and ``._+-`` made ``-``."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "metric"


def best_tag(metric: str, value: float, iteration: int) -> str:
    """The tag of a best checkpoint: ``{metric}={value:.6g}_iter{iteration:08d}``.

    Characters other than letters, digits and ``._+-`` in the metric name become ``-``.
    """
    return f"{safe_tag_part(metric)}={value:.6g}_iter{int(iteration):08d}"


class CheckpointStore(CheckpointDir):
    """A directory of checkpoints: naming, write-then-evict, a ``latest`` pointer.

    Every rank constructs the store; with ``rank0_only`` only rank 0
    (``ignite.distributed.get_rank() == 0``) writes, the others get the path it writes.
    See the module docstring for the file names.

    A write (1) writes the file atomically (temp file, fsync, rename), (2) points
    ``{prefix}_latest.json`` at it, (3) fsyncs the directory (once for the renames of
    every write queued together: a best or last file linked to it, the pointer),
    (4) removes the files it was told to evict (Ignite's ``Checkpoint`` decides which,
    through :class:`DurableSaver`), never the new file, and (5) removes temp files a
    crashed save left behind. Pointing before evicting means a crash between steps
    never leaves the pointer naming a deleted file.

    With ``background=True`` only step (1)'s serialisation runs in the caller (to
    memory, up to :data:`IN_MEMORY_LIMIT` bytes of tensors; to the temp file beyond);
    the file write, fsync, rename and steps (2)-(4) run on a worker thread, so training
    goes on while the disk catches up. The previous checkpoint stays the latest until
    the new one is committed; errors from the worker are raised by the next
    :meth:`write`, :meth:`wait` or :meth:`latest_path` (and, under
    :func:`attach_checkpoints`, at the next iteration: see :attr:`failed`). A failed
    write raises ``OSError`` with the failing errno and a message naming the
    checkpoint file. The worker is not a daemon: an
    exiting interpreter finishes the commit first.

    Args:
        dirname: Directory (created on the first save).
        n_saved: Files kept per kind (the ``n_saved`` of the Ignite ``Checkpoint``
            objects of :func:`attach_checkpoints`); ``None`` keeps all.
        prefix: File name prefix.
        rank0_only: Only rank 0 writes. With ``False`` every rank writes: give each
            rank its own ``dirname`` or ``prefix``.
        background: Commit on a worker thread (see above).

    Example:
        >>> store = CheckpointStore("runs/x/checkpoints", n_saved=2)  # doctest: +SKIP
        >>> store.write(build_payload({"model": net}, {"iteration": 100}),
        ...             "checkpoint_periodic_iter00000100.pt", "periodic")  # doctest: +SKIP
        >>> store.latest_path()  # doctest: +SKIP
    """

    def __init__(
        self,
        dirname: str | os.PathLike,
        *,
        n_saved: int | None = 1,
        prefix: str = "checkpoint",
        rank0_only: bool = True,
        background: bool = False,
    ):
        if not isinstance(dirname, (str, os.PathLike)):
            raise TypeError(f"Argument dirname={dirname!r} is not allowed: expected a path")
        if n_saved is not None and (not is_count(n_saved) or n_saved < 1):
            raise ValueError(
                f"Argument n_saved={n_saved!r} is not allowed: expected an integer >= 1 or None"
            )
        if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+-]*", prefix):
            raise ValueError(
                f"Argument prefix={prefix!r} is not allowed: expected letters, digits, '.+-' "
                "(no '_', which separates the name's parts)"
            )
        super().__init__(dirname, prefix=prefix)
        self.n_saved = n_saved
        self.rank0_only = bool(rank0_only)
        self.background = bool(background)
        self._writer = BackgroundWriter() if self.background else None
        self._jobs: deque[Callable[[], None]] = deque()
        self._failed: BaseException | None = None
        self._renamed = False  # a rename since the directory's last fsync (_settle)
        self._evict: list[str] = []  # removed once the directory is fsynced
        #: Files a checkpoint refers to by offset (the History journal): fsynced before
        #: each new checkpoint file is, so a power loss never leaves a durable
        #: checkpoint pointing past the end of a journal that was not.
        self.depends_on: list[Path] = []
        self._batch: list[Callable[[], None]] | None = None  # inside together()

    @property
    def writes(self) -> bool:
        """Whether this process writes (rank 0, or every rank without ``rank0_only``)."""
        return not self.rank0_only or idist.get_rank() == 0

    def write(
        self,
        payload: Mapping[str, Any],
        filename: str,
        kind: str,
        *,
        score: float | None = None,
        remove: list[str] | None = None,
        resumable: bool = True,
    ) -> Path:
        """Write ``payload`` as ``filename``; then point at it and remove ``remove``.

        What the Ignite save handler (:class:`DurableSaver`) calls: ``remove`` lists
        the files Ignite's ``Checkpoint`` evicted in favour of this one, deleted only
        once it is durable (``None``: nothing is removed).
        A file that is not ``resumable`` (a best checkpoint taken between two save
        points) never becomes the ``latest`` one.
        """
        path = self.dirname / filename
        as_payload(payload, "payload")
        if not self.writes:
            return path
        self.wait()
        tag = _tag_of(filename, self.prefix, kind)
        marked = {**payload, "checkpoint": {"kind": kind, "tag": tag, "score": score,
                                            "resumable": resumable}}  # fmt: skip
        iteration, epoch = as_int(payload.get("iteration")), as_int(payload.get("epoch"))
        entry = Entry(path, kind, score, iteration, epoch, resumable=resumable)
        if self.background and tensor_bytes(marked) <= IN_MEMORY_LIMIT:
            # Only the serialisation (a consistent snapshot) on the caller's thread; the
            # directory, the file write (one write: 1.7 ms instead of 3.0 ms for a 140 KiB
            # checkpoint), fsync, rename, pointer and eviction on the worker.
            content = serialize(marked)
            self._submit(lambda: self._finish(self._temp(content, path), entry, evict=remove), path)
            return path
        try:
            tmp = self._temp(marked, path)
        except OSError as err:
            raise _named(err, path) from err
        self._submit(lambda: self._finish(tmp, entry, evict=remove), path)
        return path

    def _temp(self, content: Any, path: Path) -> Path:
        self.dirname.mkdir(parents=True, exist_ok=True)
        return write_temp(content, path)

    def link(
        self,
        source: str | os.PathLike,
        filename: str,
        kind: str,
        *,
        score: float | None = None,
        remove: list[str] | None = None,
        point: bool = False,
    ) -> Path:
        """Give an already saved checkpoint a second name (another kind), without rewriting.

        A hard link when the filesystem has them, else a copy; either way atomic. Used
        when a periodic checkpoint and a best or last one fall on the same moment.
        ``remove`` as in :meth:`write`; the ``latest`` pointer keeps naming ``source``
        unless ``point`` (a run's last file: the one a resume or ``"last"`` names).

        Returns:
            The new path.
        """
        path = self.dirname / filename
        if not self.writes:
            return path
        source = Path(source)

        def link() -> None:
            meta = self.entry_of(source)  # remembered when it was written: no read
            tmp = temp_path(path)
            linked = True
            try:
                os.link(source, tmp)
            except OSError:  # no hard links here: copy
                linked = False
                try:
                    shutil.copyfile(source, tmp)
                except BaseException:
                    remove_quietly(tmp)
                    raise
            iteration, epoch = (meta.iteration, meta.epoch) if meta else (-1, -1)
            # without point, the pointer names the source already (the same moment)
            entry = Entry(path, kind, score, iteration, epoch)
            self._finish(tmp, entry, synced=linked, evict=remove, point=point)

        self._submit(link, path)
        return path

    def wait(self) -> None:
        """Block until background commits are done; raise the error of a failed one."""
        try:
            if self._writer is not None:
                self._writer.wait()
        finally:
            self._failed = None

    @property
    def failed(self) -> BaseException | None:
        """The error of a background commit that failed and was not raised yet.

        A plain attribute read (the worker sets it), cheap enough for every iteration:
        :class:`~ignitrain.handlers.checkpoint.CheckpointHandler` checks it at each
        ``ITERATION_COMPLETED`` and raises through :meth:`wait`.
        """
        return self._failed

    def _submit(self, fn: Callable[[], None], path: Path) -> None:
        def named() -> None:
            try:
                fn()
            except OSError as err:
                raise _named(err, path) from err

        # Queued without waiting for the commit before it (a best file linked to the
        # periodic one just submitted must not block training until that one is on disk).
        if self._batch is not None:
            self._batch.append(named)  # committed when together() ends
            return
        self._jobs.append(named)
        self._kick()

    def _kick(self) -> None:
        if self._writer is None:
            self._drain()
        else:
            self._writer.submit_coalesced(self._drain)

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Commit the writes and links made inside as one: their renames share one
        directory fsync (a save point's periodic file and the best or last file linked
        to it). Queued when the block ends, even when it raises; nested blocks commit
        with the outermost one.
        """
        if self._batch is not None:
            yield
            return
        self._batch = []
        try:
            yield
        finally:
            batch, self._batch = self._batch, None
            if batch:
                # one extend: a drain still running takes all of them or none
                self._jobs.extend(batch)
                self._kick()

    def _drain(self) -> None:
        """Run the queued commits in order (on the writer thread), then settle them."""
        try:
            while self._jobs:
                job = self._jobs.popleft()
                try:
                    job()
                except BaseException as err:
                    self._jobs.clear()  # never a commit after a failed one: its source may be gone
                    if self._writer is not None:  # inline, the caller gets the error
                        self._failed = err  # read by the training thread (failed)
                    raise
        finally:
            self._settle()

    def _settle(self) -> None:
        """One directory fsync for every rename of this drain, then the evictions.

        Issue 16: one ``fsync`` of the directory covers the checkpoint's rename, a best
        or last file linked to it and the pointer's rename (three before); on a 2-core
        machine each fsync cost the training thread ~0.3 ms even on the writer thread.
        Files are removed only after it: the new ones are durable by then.
        """
        if self._renamed:
            self._renamed = False
            fsync_dir(self.dirname)
        evict, self._evict = self._evict, []
        for name in evict:  # Ignite's Checkpoint decided what goes (DurableSaver)
            remove_quietly(self.dirname / name)
        self.remove_stale_temps()

    def _finish(
        self,
        tmp: Path,
        entry: Entry,
        *,
        synced: bool = False,
        evict: list[str] | None = None,
        point: bool = True,
    ) -> None:
        # Order: durable file, pointer, then (in _settle, after the directory's fsync)
        # eviction: a crash between steps never leaves the pointer naming a deleted
        # file, nor deletes before the new one is safe (Ignite's Checkpoint calls
        # remove() before writing; DurableSaver defers it to here).
        path = entry.path
        if not synced:  # a new file (a link's source had its dependencies synced)
            for dependency in self.depends_on:
                fsync_existing(dependency)
        commit_temp(tmp, path, synced=synced, sync_dir=False)  # the directory: _settle
        self._renamed = True
        self.remember(entry)
        if entry.resumable and point:
            pointer = {"file": path.name, "kind": entry.kind, "iteration": entry.iteration,
                       "epoch": entry.epoch}  # fmt: skip
            # No fsync of its own: a pointer lost or garbled by a power loss is read as
            # missing, and the reader falls back to the newest valid file (listing.py).
            write_atomic(self.pointer_path, json.dumps(pointer), durable=False)
        self._evict += [name for name in evict or () if name != path.name]

    def remove_stale_temps(self) -> None:
        """Remove temp files a killed run left in the directory (and a failed save)."""
        if self.writes and self.dirname.is_dir():
            for tmp in self.dirname.glob(f".{self.prefix}_*.tmp"):
                remove_quietly(tmp)


def _tag_of(filename: str, prefix: str, kind: str) -> str:
    head = f"{prefix}_{kind}_"
    stem = filename[: -len(".pt")] if filename.endswith(".pt") else filename
    return stem[len(head) :] if stem.startswith(head) else stem
