"""A 2-process classification job the distributed integration tests run as a real subprocess.

Usage::

    python _dist_job.py OUTPUT_DIR [--nproc N] [--resume] [--options JSON]
        [--term-at N] [--nan-at N] [--fault-rank R]
    python -m torch.distributed.run --standalone --nproc_per_node=2 _dist_job.py OUTPUT_DIR ...

Started plainly it calls ``ignitrain.launch(train, nproc_per_node=N, backend="gloo")``
(``idist.Parallel`` spawns N processes); started by torchrun the same call joins
torchrun's group. Faults, each at iteration ``N`` (``ITERATION_COMPLETED``):

* ``--term-at N``: rank ``--fault-rank`` (default 1) sends itself SIGTERM, as a
  scheduler preempting one process does.
* ``--mark-at N``: rank 0 writes ``OUTPUT_DIR/out/started`` (a test then signals the
  launcher or its process group); with ``--slow S`` every iteration sleeps ``S`` s so the
  signal lands mid-training.
* ``--nan-at N``: on rank ``--fault-rank`` the model's output at iteration ``N`` (the
  forward of iteration N's update) is NaN, so only that rank sees a NaN loss.

At the end every rank saves ``OUTPUT_DIR/out/rank{r}.pt``: its model and optimizer
state, where it stopped, ``trainer.evaluate(val)``, and the paths this process wrote
under ``OUTPUT_DIR`` (from a Python audit hook, so a write by any rank is seen).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import ignite.distributed as idist
import torch
from _job_setup import comparable, digits, job_config, job_parser, make_model, signal_after
from ignite.engine import Events

import ignitrain

# Audit events that create, replace or delete a file.
_WRITE_EVENTS = {"os.rename", "os.remove", "os.mkdir", "os.unlink", "os.truncate"}


def _record_writes(root: Path, written: list[str]) -> None:
    """Append every path this process writes under ``root`` to ``written``."""
    prefix = str(root.resolve())

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode = args[0], args[1]
            writing = isinstance(mode, str) and any(c in mode for c in "wax+")
            if isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                writing = True
        elif event in _WRITE_EVENTS:
            path, writing = args[0], True
        else:
            return
        if writing and isinstance(path, (str, os.PathLike)):
            path = os.path.abspath(os.fspath(path))
            if path.startswith(prefix) and "/out/" not in path[len(prefix) :]:
                written.append(path[len(prefix) + 1 :])

    sys.addaudithook(hook)


def _model():
    """The job's model (the tests rebuild it by this name to compute metrics by hand)."""
    return make_model(hidden=32, dropout=0.2)


def train(local_rank: int, args: argparse.Namespace) -> None:
    rank = idist.get_rank()
    torch.set_num_threads(1)
    out_dir = Path(args.output_dir)
    written: list[str] = []
    _record_writes(out_dir, written)
    train_set, val_set = digits()
    model = _model()
    config = job_config(args, optimizer="sgd", lr=0.05, momentum=0.9, save_every=10, log_every=5)
    trainer = ignitrain.create_classification_trainer(model, config, train_set, val_set)
    engine = trainer.engine
    faulty = rank == args.fault_rank

    if args.term_at is not None and faulty:
        signal_after(engine, args.term_at, signal.SIGTERM)

    if args.mark_at is not None and rank == 0:

        @engine.on(Events.ITERATION_COMPLETED(once=args.mark_at))
        def mark(_):
            (out_dir / "out").mkdir(parents=True, exist_ok=True)
            (out_dir / "out" / "started").write_text(str(os.getpid()))

    if args.slow:
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda _: time.sleep(args.slow))

    if args.nan_at is not None and faulty:

        def nan_output(module, inputs, output):
            # state.iteration is already N while the update of iteration N runs
            if module.training and engine.state.iteration == args.nan_at:
                return output * float("nan")
            return output

        model.register_forward_hook(nan_output)

    try:
        trainer.train()
        # by hand, on every rank (it gathers the RNG states); rank 0 alone writes it
        trainer.save_checkpoint(out_dir / "manual" / "checkpoint.pt")
    finally:
        # Also on a preemption exit (SystemExit): the test reads where each rank stopped.
        state = engine.state
        record = {
            "rank": rank,
            "world_size": idist.get_world_size(),
            "iteration": state.iteration,
            "epoch": state.epoch,
            "stop_reason": getattr(state, "stop_reason", None),
            "model": model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "history": comparable(trainer.history.to_dict()),
            "written": sorted(set(written)),
        }
        (out_dir / "out").mkdir(parents=True, exist_ok=True)
        torch.save(record, out_dir / "out" / f"partial{rank}.pt")
    # Every rank evaluates its shard; the metrics are reduced over both.
    record["evaluate"] = trainer.evaluate(val_set)
    torch.save(record, out_dir / "out" / f"rank{rank}.pt")


def main() -> None:
    parser = job_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=None)
    parser.add_argument("--nan-at", type=int, default=None)
    parser.add_argument("--mark-at", type=int, default=None)
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--fault-rank", type=int, default=1)
    args = parser.parse_args()
    under_torchrun = "LOCAL_RANK" in os.environ
    ignitrain.launch(
        train,
        args,
        backend="gloo",
        nproc_per_node=None if under_torchrun else args.nproc,
        timeout=60,
    )


if __name__ == "__main__":
    main()
