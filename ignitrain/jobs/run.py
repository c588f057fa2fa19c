"""Running a job in a process, and the record of the job a run leaves in its ``output_dir``."""

from __future__ import annotations

import copy
import datetime
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignitrain._files import dump_yaml, write_atomic
from ignitrain.jobs.build import build_trainer

__all__ = ["configure_logging", "run_training", "write_job"]


def write_job(
    job: Mapping[str, Any], path: str | os.PathLike, *, command: str | None = None
) -> Path:
    """Write the resolved job as YAML, atomically (:func:`ignitrain._files.write_atomic`).

    ``train.resume`` is written as ``null``: resuming is how a process started, not
    part of the run, so ``ignitrain train <this file>`` runs the whole job again (with
    ``train.seed`` set, the same run: :func:`build_trainer` seeds before building models).
    """
    path = Path(path)
    record = copy.deepcopy(dict(job))
    record["train"] = {**record["train"], "resume": None}
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    header = [f"# ignitrain job, written {stamp}"]
    if command:
        header.append(f"# started with: {command}")
    # output_dir below already holds this run: a rerun needs a new directory or --overwrite
    header.append(
        f"# run it again: ignitrain train {path} --set train.output_dir=NEW_DIR (or --overwrite)"
    )
    return write_atomic(path, "\n".join(header) + "\n" + dump_yaml(record))


def run_training(
    local_rank: int, job: Mapping[str, Any], train_changes: Mapping[str, Any] | None = None
) -> None:
    """Build the job's trainer and train it: the function each process runs.

    Top-level so that :func:`ignitrain.distributed.launch` can send it to spawned
    processes. Logging goes to stderr on rank 0 only (the epoch summaries).
    """
    del local_rank  # the flavor factories place the model on this process's device
    configure_logging()
    trainer = build_trainer(job, train_changes=train_changes)
    trainer.train()


def configure_logging() -> None:
    """Print ``ignitrain`` log records (epoch summaries) to stderr, once per process."""
    # spawned processes start without the parent's logging set-up; one stderr handler
    # on the "ignitrain" logger prints the per-epoch summary lines
    log = logging.getLogger("ignitrain")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
