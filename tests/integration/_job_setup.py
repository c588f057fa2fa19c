"""What the integration job scripts (``_resume_job.py``, ``_dist_job.py``,
``_fsdp_resume_job.py``) share: their command line, the config they train with, their
model, the faults they inject and the History as the resume tests compare it.

A job script imports this module by its plain name (the script's folder is on
``sys.path`` when it runs, and spawned ranks inherit that path); the module puts the
repository root first on ``sys.path`` so the job trains the working tree's ignitrain.

Under pytest the jobs read the digits splits from a file the test session wrote once
(``tests/integration/conftest.py``): importing scikit-learn, which ``datasets.digits``
does, costs a job process about as long as importing torch, and every job and rank paid it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ignitrain import TrainConfig, datasets  # noqa: E402

__all__ = [
    "BASE_OPTIONS",
    "DIGITS_FILE",
    "comparable",
    "digits",
    "job_config",
    "job_parser",
    "make_model",
    "signal_after",
]

#: The environment variable naming a file of ``datasets.digits(seed=0, image=False)``'s
#: train and val tensors (``{"train": [x, y], "val": [x, y]}``), written by the tests.
DIGITS_FILE = "IGNITRAIN_TEST_DIGITS_FILE"

#: The TrainConfig fields every job shares; each job adds its own, ``--options`` last.
BASE_OPTIONS: dict[str, Any] = dict(
    num_epochs=3,
    batch_size=64,
    lr_scheduler="cosine",
    n_saved=2,
    deterministic=True,
    seed=1,
    progress_bar=False,
)


def job_parser(description: str | None = None, *, kill_at: bool = False) -> argparse.ArgumentParser:
    """The arguments every job takes: ``OUTPUT_DIR [--resume] [--term-at N] [--options JSON]``
    (and ``--kill-at N`` with ``kill_at``); a job adds its own after these."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("output_dir")
    parser.add_argument("--resume", action="store_true", help='resume="latest"')
    parser.add_argument("--term-at", type=int, default=None, help="SIGTERM after iteration N")
    if kill_at:
        parser.add_argument("--kill-at", type=int, default=None, help="SIGKILL after iteration N")
    parser.add_argument("--options", default="{}", help="JSON: TrainConfig fields over the job's")
    return parser


def job_config(args: argparse.Namespace, **options: Any) -> TrainConfig:
    """:data:`BASE_OPTIONS`, then the job's ``options``, then the ``--options`` JSON."""
    merged = {
        **BASE_OPTIONS,
        "output_dir": str(args.output_dir),
        "resume": "latest" if args.resume else None,
        **options,
    }
    merged.update(json.loads(args.options))
    return TrainConfig(**merged)


def digits() -> tuple[TensorDataset, TensorDataset]:
    """The train and val sets of ``datasets.digits(seed=0, image=False)``: from the file
    named by :data:`DIGITS_FILE` when the tests set it, else made here."""
    path = os.environ.get(DIGITS_FILE)
    if not path:
        splits = datasets.digits(seed=0, image=False)
        return splits.train, splits.val
    saved = torch.load(path, weights_only=True)
    return TensorDataset(*saved["train"]), TensorDataset(*saved["val"])


def make_model(hidden: int = 32, dropout: float = 0.2) -> nn.Module:
    """The digits MLP of the jobs, its initial weights the same on every rank and run."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 10)
    )


def signal_after(engine: Engine, iteration: int, signum: int, *, group: bool = False) -> None:
    """Send ``signum`` to this process (``group``: to its whole process group) right after
    ``iteration`` completes: SIGKILL runs no handler, as the OOM killer or a dead node;
    SIGTERM is what a scheduler preempting a job sends."""

    @engine.on(Events.ITERATION_COMPLETED(once=iteration))
    def _send(_: Engine) -> None:
        if group:
            os.killpg(os.getpgrp(), signum)
        else:
            os.kill(os.getpid(), signum)


def comparable(history: dict) -> dict:
    """The History as the resume tests compare it: without the run's wall time, a
    measurement of this process that an interrupted run can never share."""
    meta = {k: v for k, v in history.get("meta", {}).items() if k != "wall_time_s"}
    return {**history, "meta": meta}
