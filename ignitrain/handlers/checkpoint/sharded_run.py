"""A trainer's checkpoints under FSDP: sharded folders in the run directory (issue 14).

:class:`~ignitrain.handlers.checkpoint.CheckpointHandler` keeps deciding when to save
and what to keep (Ignite's ``Checkpoint`` objects); under FSDP (``parallel="fsdp"``)
its save handler is :func:`trainer_saver`'s :class:`~ignitrain.handlers.sharded.ShardedSaver`
instead of the single-file ``DurableSaver``, since a file written by rank 0 would hold
rank 0's shard only. Every rank calls it (DCP's save is a collective), on the training
thread (no background commit: a collective on a worker thread would race the
training's own collectives). The folders carry the file names of the single-file
scheme without ``.pt``::

    checkpoints/checkpoint_periodic_iter00000010/   .metadata, __0_0.distcp, ...,
                                                    extra.pt, ignitrain_sharded.json
    checkpoints/sharded_latest.json                 the newest complete resume point

``extra.pt`` holds every object that is not a model or optimizer (engine, RNG,
schedules, history) as its weights_only-loadable state, plus the metadata of a
single-file checkpoint under :data:`META` (config, model description, metrics).

One pointer rule: :func:`~ignitrain.handlers.checkpoint.latest_checkpoint` is the
newest complete resume point of a run directory, file or folder, by iteration; ``resume="latest"``,
``Trainer.resume(run_dir)`` and ``ignitrain.load_checkpoint(run_dir)`` all use it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from torch import nn

from ignitrain.errors import CheckpointError
from ignitrain.fsdp import is_fsdp
from ignitrain.handlers.checkpoint.format import KINDS, saved_states
from ignitrain.handlers.checkpoint.payload import make_safe, payload_from_states
from ignitrain.handlers.checkpoint.restore import load_objects
from ignitrain.handlers.checkpoint.saver import SavedState
from ignitrain.handlers.sharded import (
    ShardedSaver,
    checkpointables,
    folder_iteration,
    is_sharded_checkpoint,
    latest_sharded,
    load_sharded_objects,
    owner_of,
    read_extra,
    read_sharded_meta,
    sharded_names,
    write_sharded,
)

__all__ = [
    "META",
    "uses_fsdp",
    "trainer_to_save",
    "trainer_saver",
    "sharded_files",
    "latest_sharded",
    "folder_iteration",
    "load_trainer_sharded",
    "save_trainer_sharded",
    "load_file_into_sharded",
    "remove_stale_folders",
]

#: The ``extra.pt`` entry holding a single-file checkpoint's metadata.
META = "ignitrain_meta"


def uses_fsdp(models: Any) -> bool:
    """Whether any of ``models`` (modules, or a mapping of them) is FSDP-sharded."""
    values = models.values() if isinstance(models, Mapping) else models
    return any(isinstance(m, nn.Module) and is_fsdp(m) for m in values)


class _Meta:
    """What Ignite's ``Checkpoint`` calls ``state_dict()`` on for the metadata."""

    def __init__(self, fn: Callable[[], Mapping[str, Any]]):
        self.fn = fn

    def state_dict(self) -> dict[str, Any]:
        return make_safe(dict(self.fn()), f"extra[{META!r}]", arrays_to_tensors=True)


def trainer_to_save(
    objects: Mapping[str, Any], wrap: Callable[[str, Any], Any], meta_fn: Callable[[], Mapping]
) -> dict[str, Any]:
    """The ``to_save`` of the Ignite ``Checkpoint`` objects under FSDP.

    Args:
        objects: The handler's objects (name -> model, optimizer, engine, ...).
        wrap: Wraps a non-sharded object for saving (the handler's weights_only-safe
            state, e.g. an engine's numpy RNG state as tensors).
        meta_fn: The metadata of a file written now (``payload_extra``).
    """
    if META in objects:
        raise ValueError(f"Object name {META!r} is reserved for the checkpoint's metadata")
    wrapped = checkpointables(objects)
    out = {
        name: obj if name in sharded_names(wrapped) else wrap(name, objects[name])
        for name, obj in wrapped.items()
    }
    out[META] = _Meta(meta_fn)
    return out


def trainer_saver(
    dirname: str | os.PathLike,
    to_save: Mapping[str, Any],
    engine: Any,
    depends_on: list[Path] | None = None,
) -> ShardedSaver:
    """The save handler of one Ignite ``Checkpoint`` (called on every rank); the files in
    ``depends_on`` (the History journal) are fsynced before each folder."""

    def meta() -> dict[str, int]:
        return _progress(engine.state.iteration, engine.state.epoch)

    return ShardedSaver(
        dirname, sharded=sharded_names(to_save), meta_fn=meta, depends_on=depends_on
    )


def _progress(iteration: Any, epoch: Any) -> dict[str, int]:
    """A folder's ``ignitrain_sharded.json`` progress: iteration, epoch, world size."""
    return {"iteration": int(iteration), "epoch": int(epoch), "world_size": idist.get_world_size()}


def save_trainer_sharded(
    objects: Mapping[str, Any], extra: Mapping[str, Any], folder: str | os.PathLike
) -> Path:
    """``Trainer.save_checkpoint`` under FSDP: one sharded folder at ``folder`` (a
    collective: call on every rank), loadable by ``Trainer.resume(folder)`` and
    ``ignitrain.load_checkpoint(folder, model=...)``."""
    to_save = trainer_to_save(objects, SavedState, lambda: extra)
    # state_dict() may be a collective (FSDP, the RNG states of every rank): every rank
    states = {name: obj.state_dict() for name, obj in to_save.items()}
    meta = {**_progress(extra.get("iteration", -1), extra.get("epoch", -1)), "resumable": True}
    return write_sharded(states, folder, sharded=sharded_names(to_save), meta=meta)


def remove_stale_folders(dirname: str | os.PathLike) -> None:
    """Remove the ``.NAME.tmp``/``.NAME.old`` folders a killed save left in ``dirname``
    (rank 0, at a run's start: no rank writes before rank 0 joins the next save)."""
    dirname = Path(dirname)
    if idist.get_rank() != 0 or not dirname.is_dir():
        return
    for path in [*dirname.glob(".*.tmp"), *dirname.glob(".*.old")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def sharded_files(dirname: str | os.PathLike, prefix: str) -> list[tuple[str, str]]:
    """``(ignite_filename, kind)`` of the complete folders in ``dirname``: what Ignite's
    ``Checkpoint`` knows them as (the folder name plus ``.pt``), for a resumed run."""
    dirname = Path(dirname)
    if not dirname.is_dir():
        return []
    out = []
    for path in sorted(dirname.glob(f"{prefix}_*")):
        kind = path.name[len(prefix) + 1 :].split("_", 1)[0]
        if kind in KINDS and not path.name.endswith(".pt") and is_sharded_checkpoint(path):
            out.append((f"{path.name}.pt", kind))
    return out


def load_trainer_sharded(
    folder: str | os.PathLike,
    objects: Mapping[str, Any],
    *,
    strict: bool = True,
    source: str | None = None,
) -> dict[str, Any]:
    """Load a sharded folder into ``objects`` (models, optimizers, engine, RNG, ...).

    A collective under a process group: call it on every rank with the same names. The
    objects that are not models or optimizers are checked and loaded by
    :func:`~ignitrain.handlers.checkpoint.load_objects` (all or nothing among them)
    *before* the shards are read; models and optimizers then go through DCP, which
    reshards when the world size differs (a ``UserWarning`` says so).

    Returns:
        A payload like a single-file checkpoint's: the metadata (``"config"``,
        ``"iteration"``, ...) and ``"sharded"``, the folder's description.

    Raises:
        CheckpointError: The folder is incomplete, unsafe, or does not fit ``objects``.
    """
    folder = Path(folder)
    source = source or str(folder)
    doc = read_sharded_meta(folder)
    wrapped = checkpointables(objects) if objects else {}
    sharded = sharded_names(wrapped)
    plain = {k: v for k, v in objects.items() if k not in sharded}
    missing = [k for k in sharded if k not in doc["sharded"]]
    if missing and strict:
        raise CheckpointError(
            f"Sharded checkpoint {source} has no {missing}; its sharded entries: {doc['sharded']}"
        )
    extra = read_extra(folder) if doc["extra"] else {}
    meta = extra.pop(META, {})
    states = {k: v for k, v in extra.items() if k in plain}
    if plain:
        payload = payload_from_states(states, {})
        load_objects(plain, payload, strict=strict, source=source)
    to_load = {k: wrapped[k] for k in sharded if k in doc["sharded"]}
    if to_load:
        load_sharded_objects(folder, to_load, strict=strict)
    return {**meta, "sharded": doc}


def load_file_into_sharded(
    objects: Mapping[str, Any],
    payload: Mapping[str, Any],
    *,
    source: str,
    allow_missing: bool = False,
) -> list[str]:
    """Load a single-file checkpoint (full tensors: a run on one process, or DDP) into
    ``objects`` whose models are FSDP-sharded (a collective: every rank, same file).

    ``Module.load_state_dict`` cannot copy full tensors into ``DTensor`` shards, so the
    models go through ``set_model_state_dict(full_state_dict=True)``, which keeps each
    rank's part, and the optimizers through ``set_optimizer_state_dict`` after their
    state is re-keyed from parameter ids to parameter names. The other objects are
    checked and loaded first by :func:`~ignitrain.handlers.checkpoint.load_objects`.

    Returns:
        The names the checkpoint did not hold (with ``allow_missing``).
    """
    # DCP: about a second of imports, paid by FSDP runs only (optional at run time)
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    saved = saved_states(payload)
    models = {k: v for k, v in objects.items() if isinstance(v, nn.Module)}
    optimizers = {k: v for k, v in objects.items() if isinstance(v, torch.optim.Optimizer)}
    tensors = [*models, *optimizers]
    lacking = [k for k in tensors if k not in saved]
    if lacking and not allow_missing:
        raise CheckpointError(
            f"Checkpoint {source} has no state named {lacking} (it holds {sorted(saved)})"
        )
    plain = {k: v for k, v in objects.items() if k not in tensors}
    absent = load_objects(plain, payload, source=source, allow_missing=allow_missing)
    options = StateDictOptions(full_state_dict=True)
    try:
        for name, model in models.items():
            if name in saved:
                inner = getattr(model, "_orig_mod", model)
                set_model_state_dict(inner, saved[name], options=options)
        for name, optimizer in optimizers.items():
            if name in saved:
                owner = models[owner_of(name, optimizer, models)]
                inner = getattr(owner, "_orig_mod", owner)
                state = _by_parameter_name(inner, optimizer, saved[name], source, name)
                set_optimizer_state_dict(inner, optimizer, state, options=options)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"Checkpoint {source} does not load into the sharded models: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return absent + [k for k in lacking if k not in absent]


def _by_parameter_name(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: Any, source: str, name: str
) -> dict[str, Any]:
    """An optimizer ``state_dict`` keyed by parameter id, re-keyed by parameter name
    (the ids of each saved group, in order, are the current group's parameters)."""
    names = {id(p): fqn for fqn, p in model.named_parameters()}
    groups = state.get("param_groups") if isinstance(state, Mapping) else None
    if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
        raise CheckpointError(
            f"Checkpoint {source}: {name!r} does not have the optimizer's "
            f"{len(optimizer.param_groups)} parameter group(s)"
        )
    by_id: dict[Any, str] = {}
    out_groups = []
    for saved, current in zip(groups, optimizer.param_groups):
        ids = saved.get("params", [])
        if len(ids) != len(current["params"]):
            raise CheckpointError(
                f"Checkpoint {source}: {name!r} has a group of {len(ids)} parameters, the "
                f"optimizer {len(current['params'])}"
            )
        fqns = [names[id(p)] for p in current["params"]]
        by_id.update(zip(ids, fqns))
        out_groups.append({**saved, "params": fqns})
    entries = state.get("state", {})
    return {
        "state": {by_id[k]: v for k, v in entries.items() if k in by_id},
        "param_groups": out_groups,
    }
