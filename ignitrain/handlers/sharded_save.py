"""Writing sharded checkpoint folders (part of :mod:`ignitrain.handlers.sharded`).

Every rank writes its shards with DCP into ``.NAME.tmp``; rank 0 adds ``extra.pt`` and
the marker file and renames the folder once every rank has finished.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed as dist
from ignite.handlers.checkpoint import BaseSaveHandler

from ignitrain._files import fsync_dir, fsync_existing, write_atomic
from ignitrain.distributed import agree_all
from ignitrain.errors import CheckpointError
from ignitrain.handlers.sharded_state import checkpointables, plain_state, sharded_names

__all__ = [
    "EXTRA",
    "FORMAT",
    "LATEST",
    "SHARDED_MARKER",
    "VERSION",
    "ShardedSaver",
    "distributed",
    "save_sharded",
    "write_sharded",
]

# torch.distributed.checkpoint (DCP) is imported where it is used: about a second of
# imports (measured, loaded machine) that only FSDP runs and sharded folders need.

#: The file that marks a folder as a complete ignitrain sharded checkpoint.
SHARDED_MARKER = "ignitrain_sharded.json"
#: :class:`ShardedSaver`'s pointer to the newest complete folder in its directory.
LATEST = "sharded_latest.json"
#: The non-sharded entries' file in a folder.
EXTRA = "extra.pt"
#: The ``format`` and ``version`` of the marker file.
FORMAT, VERSION = "ignitrain.sharded", 1


# -- the process group, or none ---------------------------------------------------


def distributed() -> bool:
    """Whether a process group is up (DCP's save then runs as a collective)."""
    return dist.is_available() and dist.is_initialized()


# -- saving ---------------------------------------------------------------------------


def save_sharded(
    state: Mapping[str, Any], folder: str | os.PathLike, *, meta: Mapping[str, Any] | None = None
) -> Path:
    """Write ``state`` as one sharded checkpoint folder (a collective: call on every rank).

    Args:
        state: Name -> object. ``nn.Module``\\ s (FSDP-sharded or not) and their
            optimizers are written shard by shard with DCP; every other object's
            ``state_dict()`` (or the object itself, if plain data) goes to ``extra.pt``,
            written by rank 0 and read back with ``torch.load(weights_only=True)``.
        folder: The checkpoint folder to create (replaced atomically if it exists).
        meta: JSON-serialisable data stored in ``ignitrain_sharded.json`` (e.g. epoch,
            iteration, score).

    Returns:
        ``folder`` as a ``Path``, complete on every rank when this returns.
    """
    objects = checkpointables(state)
    sharded = sharded_names(objects)
    # state_dict() may be a collective (FSDP, per-rank RNG): every rank calls each
    checkpoint = {name: plain_state(obj) for name, obj in objects.items()}
    return write_sharded(checkpoint, folder, sharded=sharded, meta=meta)


def write_sharded(
    checkpoint: Mapping[str, Any],
    folder: str | os.PathLike,
    *,
    sharded: Any,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write state dicts already taken (name -> state) as one sharded folder.

    The entries named in ``sharded`` go through DCP (every rank its shard); the others
    to ``extra.pt`` (rank 0). A collective: call on every rank with the same names.

    Args:
        checkpoint: Name -> state dict (what Ignite's ``Checkpoint`` hands a saver).
        folder: The checkpoint folder to create (replaced atomically if it exists).
        sharded: The names to write with DCP (models, optimizers).
        meta: JSON-serialisable data for ``ignitrain_sharded.json``.
    """
    import torch.distributed.checkpoint as dcp

    folder = Path(folder)
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise TypeError(
            f"checkpoint must be a non-empty mapping name -> state, got {type(checkpoint).__name__}"
        )
    sharded = list(sharded)
    unknown = [n for n in sharded if n not in checkpoint]
    if unknown:
        raise ValueError(
            f"sharded names {unknown} are not in the checkpoint ({', '.join(checkpoint)})"
        )
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "world_size": idist.get_world_size(),
        "torch": torch.__version__,
        "sharded": sharded,
        "extra": [n for n in checkpoint if n not in sharded],
        "meta": dict(meta or {}),
    }
    text = json.dumps(doc)  # fail before writing anything if meta is not JSON data
    # Every rank holds the same non-sharded state: serialising it everywhere first makes
    # an unsaveable object fail on all ranks alike, before any collective.
    buffer = io.BytesIO()
    torch.save({name: checkpoint[name] for name in doc["extra"]}, buffer)
    tmp = folder.with_name(f".{folder.name}.tmp")
    _on_rank_zero(folder, lambda: _fresh_dir(tmp))
    # 1. every rank writes its shards; DCP's coordinator writes .metadata last (DCP
    #    gathers a failure of any rank and raises it on all)
    dcp.save(
        {name: checkpoint[name] for name in sharded},
        storage_writer=_writer(tmp),
        no_dist=not distributed(),
    )

    # 2. the rest and the marker, then 3. the final name, once every shard is on disk
    def finish() -> None:
        write_atomic(tmp / EXTRA, buffer.getbuffer())
        write_atomic(tmp / SHARDED_MARKER, text)
        _publish(tmp, folder)

    _on_rank_zero(folder, finish)
    return folder


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)  # left by a save that was killed
    path.mkdir(parents=True)


def _on_rank_zero(folder: Path, work: Any) -> None:
    """Run ``work`` on rank 0; every rank learns whether it failed (no rank is left
    waiting in a barrier for a rank 0 that hit a full disk)."""
    error: BaseException | None = None
    if idist.get_rank() == 0:
        try:
            work()
        except OSError as exc:
            error = exc
    ok = agree_all(error is None) if distributed() else error is None
    if not ok:
        raise CheckpointError(
            f"Writing sharded checkpoint {folder} failed on rank 0: {error or 'see rank 0'}"
        ) from error


def _writer(path: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemWriter

    return FileSystemWriter(path, sync_files=True)


def _publish(tmp: Path, folder: Path) -> None:
    """Rename the finished ``tmp`` to ``folder``; an older ``folder`` goes only after."""
    fsync_dir(tmp)
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        _remove_path(old)
        os.replace(folder, old)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)
    if old is not None:
        _remove_path(old)


def _remove_path(path: Path) -> None:
    # a folder, or a single-file checkpoint of the same name (saved without FSDP before):
    # rmtree alone leaves a file, and renaming a folder onto it then fails (ENOTDIR)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class ShardedSaver(BaseSaveHandler):
    """An Ignite save handler that writes each checkpoint as a sharded folder.

    Ignite's ``Checkpoint`` decides when and what (it calls every object's
    ``state_dict()`` on every rank, then this saver on every rank); this saver writes
    the entries named in ``sharded`` with DCP and the rest to ``extra.pt``::

        to_save = checkpointables({"model": model, "optimizer": opt, "trainer": engine})
        saver = ShardedSaver(out_dir / "checkpoints", sharded=["model", "optimizer"])
        engine.add_event_handler(Events.EPOCH_COMPLETED, Checkpoint(to_save, saver))
        ...
        load_sharded_objects(saver.folder_of(checkpoint.last_checkpoint), to_save)

    Args:
        dirname: The folder holding one sub-folder per checkpoint.
        sharded: Names of the entries written with DCP (models and optimizers).
        meta_fn: Called at each save; its JSON-serialisable mapping is stored in the
            folder's ``meta`` next to Ignite's own metadata (e.g. ``{"iteration": ...}``,
            which :func:`find_sharded` orders by).
        resumable_fn: Called at each save; ``False`` keeps ``sharded_latest.json`` where
            it was (a best checkpoint taken between two save points is no resume point).
        depends_on: Files the checkpoint points into (the History journal), fsynced on
            rank 0 before each folder is written (as ``CheckpointStore.depends_on``).
    """

    def __init__(
        self,
        dirname: str | os.PathLike,
        *,
        sharded: Any,
        meta_fn: Any = None,
        resumable_fn: Any = None,
        depends_on: list[Path] | None = None,
    ) -> None:
        if isinstance(sharded, str) or not all(isinstance(n, str) for n in sharded):
            raise TypeError(f"sharded must be a list of entry names, got {sharded!r}")
        if meta_fn is not None and not callable(meta_fn):
            raise TypeError(f"meta_fn must be callable or None, got {type(meta_fn).__name__}")
        if resumable_fn is not None and not callable(resumable_fn):
            raise TypeError(
                f"resumable_fn must be callable or None, got {type(resumable_fn).__name__}"
            )
        self.dirname = Path(dirname)
        self.sharded = list(sharded)
        self.meta_fn = meta_fn
        self.resumable_fn = resumable_fn
        self.depends_on = depends_on if depends_on is not None else []
        self.last_path: Path | None = None
        self._evict: list[str] = []

    def folder_of(self, filename: str) -> Path:
        """The folder of Ignite's checkpoint ``filename`` (its ``.pt`` extension dropped)."""
        name = filename[: -len(".pt")] if filename.endswith(".pt") else filename
        return self.dirname / name

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        meta = {**dict(metadata or {}), "filename": filename}
        if self.meta_fn is not None:
            meta.update(self.meta_fn())
        resumable = self.resumable_fn() if self.resumable_fn is not None else True
        meta["resumable"] = bool(resumable)
        if idist.get_rank() == 0:
            self.dirname.mkdir(parents=True, exist_ok=True)
            for dependency in self.depends_on:  # durable before the folder pointing into it
                fsync_existing(dependency)
        folder = write_sharded(
            checkpoint, self.folder_of(filename), sharded=self.sharded, meta=meta
        )
        self.last_path = folder
        if idist.get_rank() == 0:
            if resumable:  # the pointer names only a complete folder
                write_atomic(self.dirname / LATEST, json.dumps({"folder": folder.name}))
            # evict only now that the new folder is complete (see remove)
            for name in self._evict:
                if self.folder_of(name) != folder:
                    shutil.rmtree(self.folder_of(name), ignore_errors=True)
        self._evict.clear()
        idist.barrier()

    def remove(self, filename: str) -> None:
        """Evict ``filename`` after the next successful save, not now.

        Ignite's ``Checkpoint`` calls ``remove`` *before* writing the new checkpoint:
        with ``n_saved=1`` a failed write (disk full, a kill) would leave none at all.
        """
        self._evict.append(filename)
