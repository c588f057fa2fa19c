"""The newest resume point of a run, and loading a checkpoint file or folder into objects."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ignitrain.handlers.checkpoint.format import CheckpointError
from ignitrain.handlers.checkpoint.listing import CheckpointDir
from ignitrain.handlers.checkpoint.loading import safe_load
from ignitrain.handlers.checkpoint.restore import load_objects
from ignitrain.handlers.checkpoint.sharded_run import (
    folder_iteration,
    latest_sharded,
    load_trainer_sharded,
)
from ignitrain.handlers.sharded import is_sharded_checkpoint

__all__ = ["latest_checkpoint", "latest_in", "load_checkpoint"]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete resume point of a run directory (or its ``checkpoints/``):
    a checkpoint file or a sharded folder, whichever has the higher iteration (a run
    trained with and then without FSDP holds both); ``None`` when there is none."""
    base = _checkpoints_dir(directory)
    folder, found = latest_sharded(base), CheckpointDir(base).load_latest()
    if folder is None or found is None:
        return folder if found is None else found[0]
    file, payload = found
    iteration = payload.get("iteration")
    iteration = iteration if isinstance(iteration, int) else -1
    return folder if folder_iteration(folder) >= iteration else file


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    strict: bool = True,
    **objects: Any,
) -> dict:
    """Load a checkpoint file into a model, optimizer and any other named objects.

    The file is read with ``torch.load(weights_only=True)`` only. ``model`` is loaded
    from the state named ``"model"`` and ``optimizer`` from ``"optimizer"``; pass other
    states by their names (``generator=G, discriminator=D``, ``scheduler=...``).

    Args:
        path: The checkpoint file, or a run directory (or its ``checkpoints/``) for
            its newest valid checkpoint; a sharded (FSDP) folder, or a run directory
            whose newest checkpoint is one, loads on one process into ordinary objects
            (``ignitrain.handlers.sharded_run.load_trainer_sharded``).
        model: Model to load the ``"model"`` state into (wrapped or not).
        optimizer: Optimizer to load the ``"optimizer"`` state into.
        strict: See :func:`load_objects`.
        **objects: More name -> object pairs.

    Returns:
        The payload: read ``payload["config"]``, ``payload["metrics"]``,
        ``payload["model_description"]``, ``payload["iteration"]``.

    Raises:
        CheckpointError: The file is unreadable or does not fit the objects; nothing
            is loaded then.

    Example:
        >>> payload = load_checkpoint("runs/x/checkpoints/checkpoint_last_iter00001000.pt",
        ...                           model=net)  # doctest: +SKIP
        >>> payload["metrics"]  # doctest: +SKIP
    """
    targets: dict[str, Any] = {}
    if model is not None:
        targets["model"] = model
    if optimizer is not None:
        targets["optimizer"] = optimizer
    targets.update(objects)
    if Path(path).is_dir():
        # issue 14: a sharded folder (FSDP) or the newest resume point, file or folder
        found = Path(path) if is_sharded_checkpoint(path) else latest_checkpoint(path)
        if found is not None and is_sharded_checkpoint(found):
            return load_trainer_sharded(found, targets, strict=strict)
        path = found or latest_in(path)  # latest_in raises the error naming the directory
    payload = safe_load(path)
    if targets:
        load_objects(targets, payload, strict=strict, source=str(path))
    return payload


def latest_in(directory: str | os.PathLike) -> Path:
    """The newest valid checkpoint of a run directory (or of its ``checkpoints/``).

    Raises:
        CheckpointError: The directory holds no valid checkpoint.
    """
    ckpt_dir = _checkpoints_dir(directory)
    found = CheckpointDir(ckpt_dir).latest_path()
    if found is None:
        raise CheckpointError(f"No valid checkpoint in {str(ckpt_dir)!r}")
    return found


def _checkpoints_dir(directory: str | os.PathLike) -> Path:
    """A run directory's ``checkpoints/``, or ``directory`` itself when it has none."""
    directory = Path(directory)
    return directory / "checkpoints" if (directory / "checkpoints").is_dir() else directory
