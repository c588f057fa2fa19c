"""``ignitrain train`` and ``ignitrain resume``: run a job, then test and report it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ignitrain.checkpoint_choice import choose_checkpoint
from ignitrain.cli.common import is_rank_zero
from ignitrain.cli.inference import evaluate_checkpoint
from ignitrain.distributed import launch
from ignitrain.errors import JobError
from ignitrain.evaluation_record import write_evaluation
from ignitrain.handlers.checkpoint import CheckpointStore
from ignitrain.jobs import build_data, check_job, load_job, run_training, write_job
from ignitrain.report import summary_table, write_report
from ignitrain.run_lock import existing_run, remove_run

__all__ = ["cmd_resume", "cmd_train"]


def cmd_train(args: argparse.Namespace) -> int:
    """``ignitrain train CONFIG [--set K=V ...] [--nproc N] [--overwrite]``."""
    job = load_job(args.config, args.set)
    output_dir = Path(job["train"]["output_dir"])
    if is_rank_zero():
        _guard_existing_run(output_dir, job["train"]["resume"], args.overwrite)
    check_job(job)
    if is_rank_zero():
        write_job(job, output_dir / "config.yaml", command=args.command_line)
    _launch(job, args.nproc, {})
    _test_after_training(job, output_dir)
    _finish(output_dir)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """``ignitrain resume OUTPUT_DIR [--set K=V ...] [--nproc N]``."""
    output_dir = Path(args.output_dir)
    config_path = output_dir / "config.yaml"
    if not output_dir.is_dir():
        raise JobError(f"output_dir {str(output_dir)!r} does not exist")
    if not config_path.is_file():
        raise JobError(
            f"{str(output_dir)!r} has no config.yaml: resume continues a run started with "
            "`ignitrain train`"
        )
    job = load_job(config_path, args.set)
    job["train"]["output_dir"] = str(output_dir)  # the directory may have been moved
    if _latest_checkpoint(output_dir) is None:
        raise JobError(
            f"nothing to resume in {str(output_dir)!r}: no valid checkpoint in checkpoints/. "
            f"Start the run with `ignitrain train {config_path} --overwrite`"
        )
    check_job(job)
    if args.set and is_rank_zero():
        # record the changed options; resume_allow is for this resume only (resume_rules)
        recorded = {**job, "train": {**job["train"], "resume_allow": []}}
        write_job(recorded, config_path, command=args.command_line)
    _launch(job, args.nproc, {"resume": "latest"})
    _test_after_training(job, output_dir)
    _finish(output_dir)
    return 0


def _guard_existing_run(output_dir: Path, resume: Any, overwrite: bool) -> None:
    """Refuse to mix a new run into an old one's checkpoints and history (the same rule
    and file list as the API's, :mod:`ignitrain.run_lock`; config.yaml is rewritten and
    lr_find.png, made before training, is kept)."""
    if resume is not None:
        return
    existing = existing_run(output_dir)
    if not existing:
        return
    if not overwrite:
        raise JobError(
            f"output_dir {str(output_dir)!r} already holds a run ({', '.join(existing)}). "
            f"Continue it with `ignitrain resume {output_dir}`, train elsewhere with "
            "--set train.output_dir=NEW_DIR, or pass --overwrite to replace it"
        )
    remove_run(output_dir)


def _launch(job: dict[str, Any], nproc: int | None, changes: dict[str, Any]) -> None:
    launch(run_training, job, changes, nproc_per_node=nproc, timeout=job["train"]["dist_timeout"])


def _latest_checkpoint(output_dir: Path) -> Path | None:
    directory = output_dir / "checkpoints"
    return CheckpointStore(directory).latest_path() if directory.is_dir() else None


def _test_after_training(job: dict[str, Any], output_dir: Path) -> None:
    """Evaluate the best checkpoint on the job's test split, print and record it."""
    if not is_rank_zero() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return  # under torchrun the process group is the launcher's: evaluate afterwards
    if getattr(build_data(job), "test", None) is None:
        return
    try:
        chosen = choose_checkpoint(output_dir, "best", mode=job["train"].get("best_mode"))
    except FileNotFoundError:
        return
    # printed by the summary table that follows (it reads evaluation.json)
    write_evaluation(output_dir, evaluate_checkpoint(job, chosen, None))


def _finish(output_dir: Path) -> None:
    """Write the report and print the summary table (rank 0)."""
    if not is_rank_zero():
        return
    path = write_report(output_dir)
    print(summary_table(output_dir))
    print(f"report    {path}")
