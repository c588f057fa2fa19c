"""A training job the resume tests run as a real subprocess.

Usage: python _resume_job.py OUTPUT_DIR NUM_WORKERS [--resume] [--kill-at N] [--term-at N]
    [--kill-in-last] [--options JSON]

With ``--kill-at N`` the process sends itself SIGKILL right after iteration ``N``
completes: no handler runs, nothing is flushed, exactly like the OOM killer. With
``--term-at N`` it sends itself SIGTERM instead, as a scheduler preempting a job does. At the
end it saves the final model and optimizer state to ``OUTPUT_DIR/final.pt``.
"""

import os
import signal
from pathlib import Path

import torch
from _job_setup import comparable, digits, job_config, job_parser, make_model, signal_after

import ignitrain


def main() -> None:
    parser = job_parser(__doc__.split("\n\n")[0], kill_at=True)
    parser.add_argument("num_workers", type=int)
    parser.add_argument("--kill-in-last", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(1)
    train, val = digits()
    model = make_model(hidden=48, dropout=0.3)
    config = job_config(
        args,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        warmup_steps=5,
        save_every=10,
        early_stopping_patience=5,
        log_every=3,
        num_workers=args.num_workers,
    )
    trainer = ignitrain.create_classification_trainer(model, config, train, val)
    if args.kill_at is not None:
        signal_after(trainer.engine, args.kill_at, signal.SIGKILL)
    if args.term_at is not None:  # what a cluster scheduler does before it kills
        signal_after(trainer.engine, args.term_at, signal.SIGTERM)

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
