"""A training job the resume tests run as a real subprocess.

Usage: python _resume_job.py OUTPUT_DIR NUM_WORKERS [--resume] [--kill-at N] [--term-at N]
    [--kill-in-last] [--options JSON]

With ``--kill-at N`` the process sends itself SIGKILL right after iteration ``N``
completes: no handler runs, nothing is flushed, exactly like the OOM killer. With
``--term-at N`` it sends itself SIGTERM instead, as a scheduler preempting a job does. At the
end it saves the final model and optimizer state to ``OUTPUT_DIR/final.pt``.
"""

import argparse
import json
import os
import signal
import sys
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("num_workers", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--term-at", type=int, default=None)
    parser.add_argument("--kill-in-last", action="store_true")
    parser.add_argument("--options", default="{}")
    args = parser.parse_args()

    torch.set_num_threads(1)
    splits = datasets.digits(seed=0, image=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Dropout(0.3), nn.Linear(48, 10))
    options = dict(
        num_epochs=3,
        batch_size=64,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        lr_scheduler="cosine",
        warmup_steps=5,
        save_every=10,
        n_saved=2,
        early_stopping_patience=5,
        deterministic=True,
        seed=1,
        log_every=3,
        num_workers=args.num_workers,
        output_dir=args.output_dir,
        progress_bar=False,
        resume="latest" if args.resume else None,
    )
    options.update(json.loads(args.options))
    trainer = ignitrain.create_classification_trainer(
        model, TrainConfig(**options), splits.train, splits.val
    )
    if args.kill_at is not None:

        @trainer.engine.on(Events.ITERATION_COMPLETED(once=args.kill_at))
        def die(_):
            os.kill(os.getpid(), signal.SIGKILL)

    if args.term_at is not None:  # what a cluster scheduler does before it kills

        @trainer.engine.on(Events.ITERATION_COMPLETED(once=args.term_at))
        def preempt(_):
            os.kill(os.getpid(), signal.SIGTERM)

    if args.kill_in_last:  # SIGKILL inside the final "last" write, its temp file complete
        real_replace = os.replace

        def replace(src, dst):
            if "_last_" in os.path.basename(dst):
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)

        os.replace = replace

    trainer.train()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "history": comparable(trainer.history.to_dict()),
            "iteration": trainer.engine.state.iteration,
        },
        Path(args.output_dir) / "final.pt",
    )


if __name__ == "__main__":
    main()
