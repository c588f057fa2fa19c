"""Loading a finished run's job and checkpoint to evaluate or predict, without training.

``ignitrain evaluate`` and ``ignitrain predict`` (and the test evaluation that follows
``ignitrain train``) all do the same three things: find the job the checkpoint was
trained with, build that job's trainer so that it writes nothing, and load the
checkpoint into it. :func:`job_of_checkpoint` and :func:`restore_offline` do them once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ignitrain.errors import JobError
from ignitrain.handlers.checkpoint import load_checkpoint, safe_load
from ignitrain.handlers.sharded import is_sharded_checkpoint, read_sharded_meta
from ignitrain.jobs import build_data, build_trainer, load_job, resolve_spec
from ignitrain.resume import find_checkpoint_in_dir

__all__ = [
    "Restored",
    "evaluation_data",
    "job_of_checkpoint",
    "parse_data_arg",
    "resolve_checkpoint",
    "restore_offline",
    "run_dir_of",
]

SPLITS = ("train", "val", "test")

# Evaluating or predicting writes nothing: no output_dir, no TensorBoard, no resume of
# its own, no progress bar or epoch lines.
_OFFLINE_CHANGES: dict[str, Any] = {
    "output_dir": None,
    "resume": None,
    "tensorboard": False,
    "progress_bar": False,
    "verbose": False,
}


@dataclass(frozen=True)
class Restored:
    """A job's trainer with a checkpoint loaded, and the data to run it on.

    Attributes:
        trainer: The job's :class:`~ignitrain.Trainer` (writes no files).
        dataset: The dataset chosen with ``--data`` (default: the job's test split).
        label: ``"factory:split"`` of ``dataset``, for messages and records.
        epoch: The epoch the checkpoint was saved at.
        iteration: The iteration the checkpoint was saved at.
    """

    trainer: Any
    dataset: Any
    label: str
    epoch: int
    iteration: int


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint file belongs to (the parent of ``checkpoints/``)."""
    parent = checkpoint.parent
    return parent.parent if parent.name == "checkpoints" else parent


def job_of_checkpoint(checkpoint: Path, config: str | None) -> dict[str, Any]:
    """The job ``checkpoint`` was trained with: ``config`` if given, else the run's
    ``config.yaml`` (next to ``checkpoints/`` or next to the file).

    Raises:
        JobError: No job file was given and none lies next to the checkpoint.
    """
    if config:
        return load_job(Path(config))
    for directory in (checkpoint.parent.parent, checkpoint.parent):
        if (directory / "config.yaml").is_file():
            return load_job(directory / "config.yaml")
    raise JobError(
        f"no config.yaml next to {str(checkpoint)!r}: pass the job file with --config JOB.yaml"
    )


def resolve_checkpoint(text: str) -> Path:
    """A checkpoint file, or a run directory's newest valid checkpoint (file or folder)."""
    path = Path(text)
    if path.is_dir():
        try:
            return find_checkpoint_in_dir(path)
        except FileNotFoundError as exc:
            raise JobError(str(exc)) from None
    if not path.is_file():
        raise JobError(f"checkpoint {text!r} does not exist")
    return path


def parse_data_arg(text: str | None) -> tuple[str | None, str]:
    """``--data NAME[:SPLIT]`` as ``(name or None, split)``; the split defaults to test."""
    if text is None:
        return None, "test"
    name, _, split = text.partition(":")
    split = split or "test"
    if split not in SPLITS:
        raise JobError(f"--data {text!r}: split {split!r} must be train, val or test")
    return (name.strip() or None), split


def evaluation_data(job: dict[str, Any], data_arg: str | None) -> tuple[Any, Any, str]:
    """``(job data, dataset to evaluate, label)``.

    A dataset name that is the job's data keeps the job's arguments (seed, image
    layout), so the split is the one trained on.
    """
    name, split = parse_data_arg(data_arg)
    job_data = build_data(job)
    data = job_data
    label_name = job["data"]["factory"]
    if name is not None:
        spec = resolve_spec(name, "data", "factory", "--data")
        if spec["factory"] != job["data"]["factory"]:
            other = copy.deepcopy(job)
            other["data"] = spec
            data = build_data(other)
            label_name = spec["factory"]
    chosen = getattr(data, split)
    if chosen is None:
        raise JobError(f"--data: {label_name} has no {split!r} split (it is empty)")
    return job_data, chosen, f"{label_name}:{split}"


def restore_offline(
    job: dict[str, Any],
    checkpoint: Path,
    *,
    data: str | None = None,
    device: str | None = None,
    whole_state: bool = False,
) -> Restored:
    """Build ``job``'s trainer (it writes nothing) and load ``checkpoint`` into it.

    Args:
        job: The resolved job (:func:`job_of_checkpoint`).
        checkpoint: A checkpoint file (or, with ``whole_state``, a sharded folder).
        data: ``--data NAME[:SPLIT]`` (default: the job's data, test split).
        device: Device to run on (default: the job's).
        whole_state: Restore everything a resume restores (EMA weights, sharded
            folders, engine state) instead of only the models' weights; evaluating is
            not resuming, predicting with ``--ema`` needs the EMA state.

    Raises:
        JobError: The checkpoint cannot be read, or ``data`` names no usable split.
    """
    if whole_state:
        # a corrupt or foreign file is the user's input, not a crash: read it before
        # the (slower) trainer is built (issue 14: a sharded checkpoint is a folder)
        reader = read_sharded_meta if is_sharded_checkpoint(checkpoint) else safe_load
        _load_or_explain(reader, checkpoint)
    job_data, dataset, label = evaluation_data(job, data)
    changes = dict(_OFFLINE_CHANGES, **({"device": device} if device else {}))
    trainer = build_trainer(job, train_changes=changes, data=job_data)
    if whole_state:
        trainer.resume(checkpoint)
        state = trainer.engine.state
        epoch, iteration = state.epoch, state.iteration
    else:
        payload = _load_or_explain(lambda path: load_checkpoint(path, **trainer.models), checkpoint)
        epoch, iteration = payload.get("epoch"), payload.get("iteration")
    return Restored(trainer, dataset, label, int(epoch or 0), int(iteration or 0))


def _load_or_explain(load: Any, checkpoint: Path) -> Any:
    try:
        return load(checkpoint)
    except Exception as exc:  # a corrupt or foreign file is the user's input, not a crash
        raise JobError(f"cannot load checkpoint {str(checkpoint)!r}: {exc}") from None
