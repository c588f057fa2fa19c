"""Resuming a ``Trainer`` from a checkpoint: find it, check it, restore everything."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import ignite.distributed as idist

__all__ = ["resume_from", "find_checkpoint", "find_checkpoint_in_dir"]

logger = logging.getLogger("ignitrain")


def find_checkpoint(trainer: Any, path: str | os.PathLike) -> Path | None:
    """The file ``path`` names: ``"latest"`` -> newest valid in ``output_dir``.

    Returns ``None`` only for ``"latest"`` when nothing was saved yet.

    Raises:
        FileNotFoundError: an explicit path does not exist.
    """
    from ignitrain.handlers.checkpoint import CheckpointStore

    if str(path) == "latest":
        if trainer.config.output_dir is None:
            raise ValueError("resume('latest') needs TrainConfig.output_dir to look in")
        store = (
            trainer.checkpoints.store
            if trainer.checkpoints is not None
            else CheckpointStore(Path(trainer.config.output_dir) / "checkpoints")
        )
        return store.latest_path()
    path = Path(path)
    if path.is_dir():
        return find_checkpoint_in_dir(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume: checkpoint {str(path)!r} does not exist")
    return path


def resume_from(trainer: Any, path: str | os.PathLike) -> Path | None:
    """Load the checkpoint ``path`` into ``trainer.checkpointables`` (all or nothing)."""
    from ignitrain.handlers.checkpoint import load_objects, safe_load
    from ignitrain.resume_rules import apply_resume_rules

    found = find_checkpoint(trainer, path)
    if found is None:
        logger.warning(
            "resume='latest': no checkpoint in %s yet; starting a new run",
            trainer.config.output_dir,
        )
        return None
    payload = safe_load(found)
    apply_resume_rules(trainer, payload, found)  # refuse / apply / warn each changed option
    saved_world = payload.get("world_size")
    if saved_world is not None and saved_world != idist.get_world_size():
        logger.warning(
            "Resuming a run saved with %d process(es) on %d: the data order per process changes "
            "from here on (the global batch size is unchanged).",
            saved_world,
            idist.get_world_size(),
        )
    load_objects(trainer.checkpointables, payload)
    state = trainer.engine.state
    logger.info("Resumed from %s at epoch %d, iteration %d", found, state.epoch, state.iteration)
    return found


def find_checkpoint_in_dir(directory: str | os.PathLike) -> Path:
    """Newest valid checkpoint of a run directory (or its ``checkpoints/``).

    Raises:
        FileNotFoundError: The directory holds no valid checkpoint.
    """
    from ignitrain.handlers.checkpoint import CheckpointError, latest_in

    try:
        return latest_in(directory)
    except CheckpointError as exc:
        raise FileNotFoundError(f"resume: {exc}") from None
