"""Sharded checkpoints for FSDP: every rank writes its shard with DCP, loaded safely.

One checkpoint is one folder, written under a temporary name and renamed by rank 0
once every rank has finished, so a folder with the final name is always complete::

    checkpoints/iter00000400/          (was .iter00000400.tmp while being written)
      .metadata                        DCP's index of every tensor shard (pickle)
      __0_0.distcp  __1_0.distcp       one file of tensor data per rank
      extra.pt                         other state (engine, history, RNG...): torch.save
      ignitrain_sharded.json           format, world size, names, user metadata

Models and optimizers go through ``torch.distributed.checkpoint.state_dict``
(``get_model_state_dict``/``get_optimizer_state_dict``), so their keys are the
model's parameter names, whatever the sharding. DCP stores global shapes, so a folder
written by ``N`` processes loads on ``M`` (it reshards, with a warning) and on one
process without any process group, into an ordinary model::

    save_sharded({"model": model, "optimizer": opt, "trainer": engine}, "ck/iter400")
    meta = load_sharded("ck/iter400", {"model": model, "optimizer": opt, "trainer": engine})
    weights = consolidated_state_dict("ck/iter400")       # plain tensors, no process group

Safe loading: every read goes through :mod:`ignitrain.handlers.safe_dcp` (DCP's own
reader unpickles ``.metadata`` with plain ``pickle`` and non-tensor items with
``weights_only`` off; a crafted folder is a ``CheckpointError`` there, before it runs).
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed as dist
from ignite.handlers.checkpoint import BaseSaveHandler

from ignitrain._files import commit_temp, fsync_dir, remove_quietly, temp_path, write_atomic
from ignitrain.distributed import agree_all
from ignitrain.errors import CheckpointError
from ignitrain.handlers.safe_dcp import (
    SafeFileSystemReader,
    SafeLoadPlanner,
    read_metadata,
    safe_dcp_load,
)
from ignitrain.handlers.sharded_state import (
    ModelState,
    OptimizerState,
    checkpointables,
    owner_of,
    plain_state,
    sharded_names,
)

__all__ = [
    "SHARDED_MARKER",
    "LATEST",
    "sharded_names",
    "owner_of",
    "read_latest",
    "ModelState",
    "OptimizerState",
    "checkpointables",
    "ShardedSaver",
    "save_sharded",
    "read_extra",
    "write_sharded",
    "load_sharded",
    "load_sharded_objects",
    "read_sharded_meta",
    "is_sharded_checkpoint",
    "find_sharded",
    "consolidated_state_dict",
    "export_model",
    "safe_dcp_load",
    "SafeFileSystemReader",
    "SafeLoadPlanner",
]

#: The file that marks a folder as a complete ignitrain sharded checkpoint.
SHARDED_MARKER = "ignitrain_sharded.json"
#: :class:`ShardedSaver`'s pointer to the newest complete folder in its directory.
LATEST = "sharded_latest.json"
_EXTRA = "extra.pt"
_FORMAT = "ignitrain.sharded"
_VERSION = 1


# -- the process group, or none ---------------------------------------------------


# torch.distributed.checkpoint (DCP) is imported where it is used: about a second of
# imports (measured, loaded machine) that only FSDP runs and sharded folders need.


def _distributed() -> bool:
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
        "format": _FORMAT,
        "version": _VERSION,
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
        no_dist=not _distributed(),
    )

    # 2. the rest and the marker, then 3. the final name, once every shard is on disk
    def finish() -> None:
        write_atomic(tmp / _EXTRA, buffer.getbuffer())
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
    ok = agree_all(error is None) if _distributed() else error is None
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
    """

    def __init__(
        self,
        dirname: str | os.PathLike,
        *,
        sharded: Any,
        meta_fn: Any = None,
        resumable_fn: Any = None,
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


# -- loading -------------------------------------------------------------------------


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a complete folder written by :func:`save_sharded`."""
    return (Path(path) / SHARDED_MARKER).is_file()


def read_sharded_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """The contents of ``ignitrain_sharded.json`` (format, world size, names, ``meta``)."""
    path = Path(folder) / SHARDED_MARKER
    if not path.is_file():
        raise CheckpointError(
            f"{folder} is not a complete ignitrain sharded checkpoint: {SHARDED_MARKER} "
            "is missing (a save that did not finish leaves only a '.NAME.tmp' folder)"
        )
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupted: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is not an ignitrain sharded checkpoint description")
    if doc.get("version", 0) > _VERSION:
        raise CheckpointError(
            f"{path} has format version {doc['version']}; this ignitrain reads up to "
            f"{_VERSION}: upgrade ignitrain"
        )
    return doc


def load_sharded(
    folder: str | os.PathLike, state: Mapping[str, Any], *, strict: bool = True
) -> dict[str, Any]:
    """Load a :func:`save_sharded` folder into the models, optimizers and objects of
    ``state`` (in place; models and optimizers are wrapped by :func:`checkpointables`).

    Call it on every rank (a collective), or on one process with no process group. The
    objects may be sharded differently from the ones saved (another world size, no FSDP
    at all): DCP reshards. A different world size is reported with a ``UserWarning``.

    Args:
        folder: The checkpoint folder.
        state: Name -> object, as given to :func:`save_sharded`; may be a subset.
        strict: Every name in ``state`` must be in the checkpoint.

    Returns:
        The checkpoint's description (``read_sharded_meta``); ``["meta"]`` is the
        ``meta`` given when saving.

    Raises:
        CheckpointError: the folder is incomplete, corrupted, unsafe, or lacks a name.
    """
    return load_sharded_objects(folder, checkpointables(state), strict=strict)


def load_sharded_objects(
    folder: str | os.PathLike, to_load: Mapping[str, Any], *, strict: bool = True
) -> dict[str, Any]:
    """``Checkpoint.load_objects`` for a sharded folder: ``obj.load_state_dict(state)``
    for every ``name -> obj`` of ``to_load`` (models as :class:`ModelState`, optimizers
    as :class:`OptimizerState`). A collective under a process group.

    Returns:
        The checkpoint's description, as :func:`load_sharded`.
    """
    folder = Path(folder)
    doc = read_sharded_meta(folder)
    if not isinstance(to_load, Mapping) or not to_load:
        raise TypeError(
            f"to_load must be a non-empty mapping name -> object, got {type(to_load).__name__}"
        )
    saved = set(doc["sharded"]) | set(doc["extra"])
    missing = [name for name in to_load if name not in saved]
    if missing and strict:
        raise CheckpointError(
            f"Sharded checkpoint {folder} has no {missing}; it holds {sorted(saved)}"
        )
    if doc["world_size"] != idist.get_world_size():
        warnings.warn(
            f"Sharded checkpoint {folder} was written by {doc['world_size']} process(es) and "
            f"is loaded by {idist.get_world_size()}: its tensors are resharded; the data order and "
            "per-rank RNG streams of the saved run do not carry over exactly",
            UserWarning,
            stacklevel=3,
        )
    # the objects' own state dicts are the templates: DCP fills them in their sharding
    sharded = {name: to_load[name].state_dict() for name in doc["sharded"] if name in to_load}
    if sharded:
        safe_dcp_load(sharded, folder)
    for name, state in sharded.items():
        to_load[name].load_state_dict(state)
    _load_extra(folder, {k: v for k, v in to_load.items() if k in doc["extra"]})
    return doc


def read_extra(folder: Path) -> dict[str, Any]:
    """The folder's non-sharded entries (``extra.pt``), read with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, does not load safely or holds no dict.
    """
    path = folder / _EXTRA
    try:
        extra = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"Sharded checkpoint {folder} has no {_EXTRA}") from None
    except Exception as exc:
        raise CheckpointError(
            f"{path} does not load with torch.load(weights_only=True): {exc}"
        ) from exc
    if not isinstance(extra, dict):
        raise CheckpointError(f"{path} holds {type(extra).__name__}, expected a dict")
    return extra


def _load_extra(folder: Path, objects: Mapping[str, Any]) -> None:
    if not objects:
        return
    extra = read_extra(folder)
    for name, obj in objects.items():
        if hasattr(obj, "load_state_dict"):
            obj.load_state_dict(extra[name])


# -- one consolidated model -----------------------------------------------------------


def find_sharded(path: str | os.PathLike) -> Path:
    """The sharded checkpoint folder ``path`` names: the folder itself, or in ``path`` or
    ``path/checkpoints`` (a run directory) the one ``sharded_latest.json`` names, else the
    newest complete one (by ``meta["iteration"]``, then modification time).
    """
    path = Path(path)
    if is_sharded_checkpoint(path):
        return path
    bases = [b for b in (path, path / "checkpoints") if b.is_dir()]
    for base in bases:
        latest = read_latest(base)
        if latest is not None:
            return latest
    candidates = [
        p
        for base in bases
        for p in base.iterdir()
        if p.is_dir() and not p.name.startswith(".") and is_sharded_checkpoint(p)
    ]
    if not candidates:
        raise CheckpointError(
            f"{path} is neither a sharded checkpoint folder nor a run directory holding one "
            f"(no folder with {SHARDED_MARKER} in it or in its checkpoints/)"
        )

    def order(p: Path) -> tuple[float, float]:
        iteration = read_sharded_meta(p)["meta"].get("iteration")
        it = float(iteration) if isinstance(iteration, (int, float)) else -1.0
        return it, (p / SHARDED_MARKER).stat().st_mtime

    return max(candidates, key=order)


def read_latest(base: Path) -> Path | None:
    """The complete folder ``base/sharded_latest.json`` names (``None``: none, or broken)."""
    try:
        name = json.loads((base / LATEST).read_text())["folder"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no pointer (or a broken one): fall back to scanning
    folder = base / str(name)
    # the pointer names a folder by its final name only: never a partial one
    return folder if "/" not in str(name) and is_sharded_checkpoint(folder) else None


def consolidated_state_dict(folder: str | os.PathLike, key: str = "model") -> dict[str, Any]:
    """The full (unsharded) state dict of model ``key``, read on one process.

    Needs no model and no process group: tensors are allocated from the checkpoint's
    metadata (global shapes and dtypes) and filled by DCP. The result loads into an
    ordinary model with ``model.load_state_dict``.
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    folder = Path(folder)
    doc = read_sharded_meta(folder)
    if key not in doc["sharded"]:
        raise CheckpointError(
            f"Sharded checkpoint {folder} has no model {key!r}; its sharded entries: "
            f"{doc['sharded']}"
        )
    metadata = read_metadata(folder / ".metadata")
    if idist.get_rank() != 0:
        raise RuntimeError("consolidated_state_dict runs on one process: call it on rank 0")
    prefix = f"{key}."
    flat: dict[str, Any] = {}
    for fqn, item in metadata.state_dict_metadata.items():
        if fqn.startswith(prefix) and isinstance(item, TensorStorageMetadata):
            flat[fqn] = torch.empty(item.size, dtype=item.properties.dtype)
    safe_dcp_load(flat, folder)
    return {fqn[len(prefix) :]: t for fqn, t in flat.items()}


def export_model(
    src: str | os.PathLike, out: str | os.PathLike, *, key: str = "model"
) -> pathlib.Path:
    """Write model ``key`` of a sharded checkpoint (or the newest in a run directory) as
    one full state dict that ``torch.load(out, weights_only=True)`` opens.

    Returns:
        ``out`` as a ``Path`` (written atomically).
    """
    folder = find_sharded(src)
    weights = consolidated_state_dict(folder, key)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    try:
        with open(tmp, "wb") as f:
            torch.save(weights, f)
        commit_temp(tmp, out)
    except BaseException:
        remove_quietly(tmp)
        raise
    return out
