"""A ``parallel="fsdp"`` classification job the FSDP resume tests run as a real subprocess.

Usage: python _fsdp_resume_job.py OUTPUT_DIR NPROC [--resume] [--kill-at N] [--term-at N]
[--options JSON]

``NPROC`` gloo processes (``ignitrain.launch``); ``NPROC=1`` runs without a process group
(``parallel="fsdp"`` then trains like ``"auto"``). With ``--kill-at N`` rank 0 sends
SIGKILL to the whole process group right after iteration ``N`` completes: no handler
runs on any rank, as when a node dies. With ``--term-at N`` rank 0 sends itself SIGTERM
after iteration ``N`` instead, as a scheduler preempting a job does. At the end every
rank gathers the full model and optimizer state and rank 0 saves it to
``OUTPUT_DIR/final.pt``, after
``trainer.save_checkpoint(OUTPUT_DIR/manual/checkpoint{world size})`` on every rank.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import ignite.distributed as idist
import torch
from _job_setup import comparable, digits, job_config, job_parser, make_model, signal_after

import ignitrain

__all__ = ["make_model"]  # the tests rebuild the job's model by this name


def _full_state(trainer) -> dict:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model = trainer.model
    return {
        "model": get_model_state_dict(model, options=options),
        "optimizer": get_optimizer_state_dict(model, trainer.optimizer, options=options),
    }


def train(local_rank: int, args: argparse.Namespace) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    train_set, val_set = digits()
    config = job_config(args, optimizer="adam", lr=0.01, save_every=7, log_every=5, parallel="fsdp")
    trainer = ignitrain.create_classification_trainer(make_model(), config, train_set, val_set)
    if idist.get_rank() == 0:
        if args.kill_at is not None:  # the whole group: no handler runs on any rank
            signal_after(trainer.engine, args.kill_at, signal.SIGKILL, group=True)
        if args.term_at is not None:
            signal_after(trainer.engine, args.term_at, signal.SIGTERM)

    trainer.train()
    # by hand, on every rank: a sharded folder under FSDP
    manual = f"checkpoint{idist.get_world_size()}"  # a folder under FSDP, else a file
    trainer.save_checkpoint(Path(args.output_dir) / "manual" / manual)
    state = _full_state(trainer)  # a collective: every rank
    if idist.get_rank() == 0:
        state["history"] = comparable(trainer.history.to_dict())
        state["iteration"] = trainer.engine.state.iteration
        torch.save(state, Path(args.output_dir) / "final.pt")


def main() -> None:
    parser = job_parser(__doc__.split("\n\n")[0], kill_at=True)
    parser.add_argument("nproc", type=int)
    args = parser.parse_args()
    if args.nproc == 1:
        train(0, args)
        return
    ignitrain.launch(train, args, backend="gloo", nproc_per_node=args.nproc, timeout=60)


if __name__ == "__main__":
    main()
