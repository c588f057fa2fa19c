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
import json
import os
import signal
import sys
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Events
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import ignitrain  # noqa: E402
from ignitrain import TrainConfig, datasets  # noqa: E402


def comparable(history: dict) -> dict:
    """The History as the resume tests compare it: without the run's wall time, a
    measurement of this process that an interrupted run can never share."""
    meta = {k: v for k, v in history.get("meta", {}).items() if k != "wall_time_s"}
    return {**history, "meta": meta}


def make_model() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank and in every run
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))


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
    splits = datasets.digits(seed=0, image=False)
    options = dict(
        num_epochs=3,
        batch_size=64,
        optimizer="adam",
        lr=0.01,
        lr_scheduler="cosine",
        save_every=7,
        n_saved=2,
        deterministic=True,
        seed=1,
        log_every=5,
        output_dir=args.output_dir,
        progress_bar=False,
        parallel="fsdp",
        resume="latest" if args.resume else None,
    )
    options.update(json.loads(args.options))
    trainer = ignitrain.create_classification_trainer(
        make_model(), TrainConfig(**options), splits.train, splits.val
    )
    if args.kill_at is not None and idist.get_rank() == 0:

        @trainer.engine.on(Events.ITERATION_COMPLETED(once=args.kill_at))
        def die(_):
            os.killpg(os.getpgrp(), signal.SIGKILL)

    if args.term_at is not None and idist.get_rank() == 0:

        @trainer.engine.on(Events.ITERATION_COMPLETED(once=args.term_at))
        def preempt(_):
            os.kill(os.getpid(), signal.SIGTERM)

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
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("nproc", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--term-at", type=int, default=None)
    parser.add_argument("--options", default="{}")
    args = parser.parse_args()
    if args.nproc == 1:
        train(0, args)
        return
    ignitrain.launch(train, args, backend="gloo", nproc_per_node=args.nproc, timeout=60)


if __name__ == "__main__":
    main()
