"""``ignitrain lr-find`` and ``ignitrain report``: looking before and after training."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ignitrain.errors import JobError
from ignitrain.jobs import build_trainer, check_job, configure_logging, load_job
from ignitrain.lr_suggest import judge_lr_curve
from ignitrain.report import summary_table, write_report

__all__ = ["cmd_lr_find", "cmd_report"]


def cmd_lr_find(args: argparse.Namespace) -> int:
    """``ignitrain lr-find CONFIG [--set K=V ...]``: suggest a learning rate, plot the curve."""
    job = load_job(args.config, args.set)
    check_job(job)
    configure_logging()
    output_dir = Path(job["train"]["output_dir"])
    # the range test must not write checkpoints or history into the run's directory
    changes = {"output_dir": None, "resume": None, "tensorboard": False}
    trainer = build_trainer(job, train_changes=changes)
    options = {
        key: value
        for key, value in (
            ("start_lr", args.start_lr),
            ("end_lr", args.end_lr),
            ("num_iter", args.num_iter),
        )
        if value is not None
    }
    try:
        result = trainer.find_lr(**options)
    except (TypeError, ValueError) as exc:
        raise JobError(f"lr-find: {exc}") from None
    output_dir.mkdir(parents=True, exist_ok=True)
    plot = output_dir / "lr_find.png"
    result.plot(plot)
    tried = (
        f"{len(result.lrs)} steps, lr {result.lrs[0]:.3g} .. {result.lrs[-1]:.3g}"
        if result.lrs
        else "0 steps"
    )
    print(
        f"range test    {tried}" + (" (stopped: the loss diverged)" if result.stopped_early else "")
    )
    verdict = judge_lr_curve(result.lrs, result.losses, result.suggestion)
    if verdict.reliable:
        print(f"suggested lr  {result.suggestion:.3g}")
    else:
        # a number over a curve that says nothing is worse than none: no ready-made command
        print(f"suggested lr  none reliable: {verdict.reason}", file=sys.stderr)
        print("suggested lr  none (see the plot; the warning above says why)")
    print(f"plot          {plot}")
    if verdict.reliable:
        print(f"train with    ignitrain train {args.config} --set train.lr={result.suggestion:.3g}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``ignitrain report OUTPUT_DIR``."""
    try:
        path = write_report(args.output_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise JobError(str(exc)) from None
    print(summary_table(args.output_dir))
    print(f"report    {path}")
    return 0
