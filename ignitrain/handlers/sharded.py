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

import json
import os
import pathlib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch

from ignitrain._files import commit_temp, remove_quietly, temp_path
from ignitrain.errors import CheckpointError
from ignitrain.handlers.safe_dcp import (
    SafeFileSystemReader,
    SafeLoadPlanner,
    read_metadata,
    safe_dcp_load,
)
from ignitrain.handlers.sharded_save import (
    EXTRA,
    FORMAT,
    LATEST,
    SHARDED_MARKER,
    VERSION,
    ShardedSaver,
    save_sharded,
    write_sharded,
)
from ignitrain.handlers.sharded_state import (
    ModelState,
    OptimizerState,
    checkpointables,
    owner_of,
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
    "folder_iteration",
    "latest_sharded",
    "consolidated_state_dict",
    "export_model",
    "safe_dcp_load",
    "SafeFileSystemReader",
    "SafeLoadPlanner",
]

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
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ignitrain sharded checkpoint description")
    if doc.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} has format version {doc['version']}; this ignitrain reads up to "
            f"{VERSION}: upgrade ignitrain"
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
    path = folder / EXTRA
    try:
        extra = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"Sharded checkpoint {folder} has no {EXTRA}") from None
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
    """The sharded checkpoint folder ``path`` names: the folder itself, or the newest
    resume point (:func:`latest_sharded`) of ``path`` or of ``path/checkpoints`` (a run
    directory).
    """
    path = Path(path)
    if is_sharded_checkpoint(path):
        return path
    for base in (path, path / "checkpoints"):
        found = latest_sharded(base)
        if found is not None:
            return found
    raise CheckpointError(
        f"{path} is neither a sharded checkpoint folder nor a run directory holding one "
        f"(no folder with {SHARDED_MARKER} in it or in its checkpoints/)"
    )


def folder_iteration(folder: Path) -> int:
    """The iteration a sharded folder was written at (``-1``: unknown or unreadable)."""
    try:
        value = read_sharded_meta(folder)["meta"].get("iteration", -1)
    except CheckpointError:
        return -1
    return int(value) if isinstance(value, int) else -1


def latest_sharded(dirname: str | os.PathLike) -> Path | None:
    """The newest complete resume folder of a checkpoint directory: the one
    ``sharded_latest.json`` names, else (no or a broken pointer) the highest iteration
    among the resumable folders; ``None`` when there is none."""
    dirname = Path(dirname)
    if not dirname.is_dir():
        return None
    pointed = read_latest(dirname)
    if pointed is not None:
        return pointed
    folders = []
    for path in dirname.iterdir():
        if path.is_dir() and not path.name.startswith(".") and is_sharded_checkpoint(path):
            meta = read_sharded_meta(path)["meta"]
            if meta.get("resumable", True):
                folders.append(path)
    return max(folders, key=lambda p: (folder_iteration(p), p.stat().st_mtime_ns), default=None)


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
