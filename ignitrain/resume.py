"""Resuming a ``Trainer`` from a checkpoint: find it, check it, restore everything."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import ignite.distributed as idist

from ignitrain.handlers.checkpoint import load_objects, safe_load
from ignitrain.handlers.checkpoint.latest import latest_checkpoint
from ignitrain.handlers.checkpoint.sharded_run import (
    META,
    load_file_into_sharded,
    load_trainer_sharded,
    uses_fsdp,
)
from ignitrain.handlers.sharded import is_sharded_checkpoint, read_extra, read_sharded_meta
from ignitrain.resume_rules import apply_resume_rules, write_into_live_optimizers

__all__ = ["resume_from", "find_checkpoint", "find_checkpoint_in_dir", "finish_interrupted_run"]

logger = logging.getLogger("ignitrain")


def find_checkpoint(trainer: Any, path: str | os.PathLike) -> Path | None:
    """The file or sharded folder ``path`` names: ``"latest"`` -> newest valid in
    ``output_dir`` (a file or a sharded folder, see ``sharded_run.latest_checkpoint``).

    Returns ``None`` only for ``"latest"`` when nothing was saved yet.

    Raises:
        FileNotFoundError: an explicit path does not exist.
    """
    if str(path) == "latest":
        if trainer.config.output_dir is None:
            raise ValueError("resume('latest') needs TrainConfig.output_dir to look in")
        if trainer.checkpoints is not None:
            trainer.checkpoints.store.wait()  # a background commit still running
        return latest_checkpoint(Path(trainer.config.output_dir) / "checkpoints")
    path = Path(path)
    if is_sharded_checkpoint(path):
        return path
    if path.is_dir():
        return find_checkpoint_in_dir(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume: checkpoint {str(path)!r} does not exist")
    return path


def resume_from(trainer: Any, path: str | os.PathLike) -> Path | None:
    """Load the checkpoint ``path`` into ``trainer.checkpointables`` (all or nothing).

    A file written by Ignite's own ``Checkpoint``/``ModelCheckpoint`` (``{"model": ...,
    "optimizer": ..., "trainer": ...}``) restores what it holds; a warning names the
    objects it did not hold, which keep their current state.
    """
    found = find_checkpoint(trainer, path)
    if found is None:
        logger.warning(
            "resume='latest': no checkpoint in %s yet; starting a new run",
            trainer.config.output_dir,
        )
        return None
    if is_sharded_checkpoint(found):  # issue 14: FSDP's folders, on every rank
        return _resume_sharded(trainer, found)
    payload = safe_load(found, foreign=True)
    apply_resume_rules(trainer, payload, found)  # refuse / apply / warn each changed option
    saved_world = payload.get("world_size")
    if saved_world is not None and saved_world != idist.get_world_size():
        logger.warning(
            "Resuming a run saved with %d process(es) on %d: the data order per process changes "
            "from here on (the global batch size is unchanged).",
            saved_world,
            idist.get_world_size(),
        )
    foreign = bool(payload.get("foreign"))
    # issue 14: a file of full tensors (one process, DDP) into FSDP-sharded models
    load = load_file_into_sharded if uses_fsdp(trainer.models) else load_objects
    absent = load(trainer.checkpointables, payload, source=str(found), allow_missing=foreign)
    if absent:
        logger.warning(
            "Resumed from %s, a checkpoint not written by ignitrain: it holds no state for %s "
            "(left as they are)",
            found,
            ", ".join(absent),
        )
    state = trainer.engine.state
    logger.info("Resumed from %s at epoch %d, iteration %d", found, state.epoch, state.iteration)
    return found


def _resume_sharded(trainer: Any, folder: Path) -> Path:
    """Load a sharded folder into ``trainer.checkpointables`` (a collective).

    Another world size reshards the models and optimizers; ``load_sharded_objects``
    warns (``UserWarning``), and the log says what changes.
    """
    # the resume rules first, on the folder's metadata and plain states (extra.pt), so
    # that a refused change loads nothing; optimizer values go into the loaded optimizers
    extra = read_extra(folder) if read_sharded_meta(folder)["extra"] else {}
    described = {**extra.pop(META, {}), "state": extra}  # the layout the rules read
    changes = apply_resume_rules(trainer, described, folder)
    payload = load_trainer_sharded(folder, trainer.checkpointables)
    write_into_live_optimizers(trainer, changes)
    engine = extra.get("trainer")
    state = trainer.engine.state
    if isinstance(engine, dict) and (engine.get("iteration"), engine.get("epoch_length")) != (
        state.iteration,
        state.epoch_length,
    ):  # the epoch re-planned by resume_allow=["batch_size"] (written into ``extra``)
        trainer.engine.load_state_dict(engine)
    saved_world = payload["sharded"].get("world_size")
    if saved_world is not None and saved_world != idist.get_world_size():
        logger.warning(
            "Resuming a sharded run saved with %d process(es) on %d: its shards were "
            "resharded; the data order per process changes from here on.",
            saved_world,
            idist.get_world_size(),
        )
    state = trainer.engine.state
    logger.info("Resumed from %s at epoch %d, iteration %d", folder, state.epoch, state.iteration)
    return folder


def find_checkpoint_in_dir(directory: str | os.PathLike) -> Path:
    """Newest valid checkpoint (file or sharded folder) of a run directory (or its
    ``checkpoints/``).

    Raises:
        FileNotFoundError: The directory holds no valid checkpoint.
    """
    if is_sharded_checkpoint(directory):  # a sharded checkpoint is a folder itself
        return Path(directory)
    found = latest_checkpoint(directory)
    if found is None:
        raise FileNotFoundError(f"resume: no valid checkpoint in {str(directory)!r}")
    return found


def finish_interrupted_run(trainer: Any) -> None:
    """Complete a run resumed at its end whose ``last`` checkpoint was never written.

    A kill during the final ``last`` write leaves the epoch-end checkpoint as the
    latest: the resumed run has nothing left to train, but writes the missing ``last``
    checkpoint and records why it stopped (in the History, and ``history.json``).
    """
    handler = trainer.checkpoints
    if handler is None:
        return
    store = handler.store
    state = trainer.engine.state
    tag = f"iter{state.iteration:08d}"
    last = store.dirname / f"{store.prefix}_last_{tag}.pt"  # the name Ignite's Checkpoint gives
    if handler.sharded:  # issue 14: a folder (the name without .pt), or a file of a
        # run on one process; every rank looks (they all write the folder, or none)
        if is_sharded_checkpoint(last.with_suffix("")) or last.is_file():
            return
    elif store.writes and last.exists():
        return
    store.remove_stale_temps()
    history = trainer.history
    history.meta.setdefault("stop_reason", getattr(state, "stop_reason", None) or "completed")
    history.meta.setdefault("stopped_at", {"epoch": state.epoch, "iteration": state.iteration})
    path = handler.save_now("last")
    if trainer.config.output_dir is not None and idist.get_rank() == 0:
        history.save(Path(trainer.config.output_dir) / "history.json")
    logger.warning(
        "The previous run stopped during its final checkpoint: wrote the missing %s", path
    )
