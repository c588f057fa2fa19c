"""``ignitrain evaluate``, ``ignitrain predict`` and ``ignitrain export``: using a trained run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ignitrain.checkpoint_choice import ChosenCheckpoint, choose_checkpoint
from ignitrain.cli.common import is_rank_zero
from ignitrain.cli.offline import (
    job_of_checkpoint,
    resolve_checkpoint,
    restore_offline,
    run_dir_of,
)
from ignitrain.errors import JobError
from ignitrain.evaluation_record import write_evaluation
from ignitrain.handlers.checkpoint import save_atomic
from ignitrain.handlers.sharded import export_model, find_sharded

__all__ = ["cmd_evaluate", "cmd_export", "cmd_predict", "evaluate_checkpoint"]


def evaluate_checkpoint(
    job: dict[str, Any], chosen: ChosenCheckpoint, data_arg: str | None, device: str | None = None
) -> dict[str, Any]:
    """Build the job's trainer, load ``chosen``'s weights and evaluate on ``data_arg``.

    Returns:
        The record :func:`~ignitrain.evaluation_record.write_evaluation` writes: the
        checkpoint, how it was chosen, the data, the epoch and iteration, the metrics.
    """
    # the weights only: evaluating is not resuming (no engine state, no "Resumed from")
    run = restore_offline(job, chosen.path, data=data_arg, device=device)
    try:
        metrics = run.trainer.evaluate(run.dataset)
    except RuntimeError as exc:
        if run.label.split(":")[0] == job["data"]["factory"]:
            raise  # the job's own data failing is not a mismatch: show the traceback
        first = str(exc).strip().splitlines()[0]
        raise JobError(
            f"evaluating on {run.label} failed, does it match the model? {first}"
        ) from None
    return {
        "checkpoint": str(chosen.path),
        "which": chosen.which,
        "chosen": chosen.describe(),
        "data": run.label,
        "num_samples": len(run.dataset) if hasattr(run.dataset, "__len__") else None,
        "epoch": run.epoch,
        "iteration": run.iteration,
        "metrics": metrics,
    }


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``ignitrain evaluate RUN [--checkpoint best|last|PATH] [--data NAME[:SPLIT]] [--json]``."""
    try:
        chosen = choose_checkpoint(args.checkpoint, args.which)
    except FileNotFoundError as exc:
        raise JobError(str(exc)) from None
    job = job_of_checkpoint(chosen.path, args.config)
    result = evaluate_checkpoint(job, chosen, args.data, args.device)
    if chosen.note:
        print(f"note: {chosen.note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_evaluation(chosen, result)
    if is_rank_zero() and result["data"].endswith(":test") and chosen.which != "path":
        write_evaluation(run_dir_of(chosen.path), result)
    return 0


def _print_evaluation(chosen: ChosenCheckpoint, result: dict[str, Any]) -> None:
    print(f"checkpoint {chosen.describe()}: {chosen.path}")
    print(f"           epoch {result['epoch']}, iteration {result['iteration']}")
    print(f"data       {result['data']} ({result['num_samples']} samples)")
    metrics = result["metrics"]
    width = max((len(k) for k in metrics), default=6)
    for key, value in metrics.items():
        print(f"{key:<{width}}  {value:.6g}")


def cmd_predict(args: argparse.Namespace) -> int:
    """``ignitrain predict RUN_DIR --data NAME[:SPLIT] --out PATH [--argmax] [--targets]``.

    Writes ``{"predictions", "targets"?, "checkpoint", "data"}`` with ``torch.save``
    (readable with ``torch.load(path, weights_only=True)``), atomically: a crash or a
    full disk leaves the previous file (or none), never half of one.
    """
    checkpoint = resolve_checkpoint(args.checkpoint)
    job = job_of_checkpoint(checkpoint, args.config)
    # the whole state: --ema needs the EMA weights, a sharded folder its own loader
    run = restore_offline(job, checkpoint, data=args.data, device=args.device, whole_state=True)
    try:
        result = run.trainer.predict(
            run.dataset, return_targets=args.targets, argmax=args.argmax, ema=args.ema
        )
    except ValueError as exc:
        raise JobError(str(exc)) from None
    preds, targets = result if args.targets else (result, None)
    payload: dict[str, Any] = {
        "predictions": preds,
        "checkpoint": str(checkpoint),
        "data": run.label,
    }
    if targets is not None:
        payload["targets"] = targets
    out = Path(args.out)
    if is_rank_zero():
        out.parent.mkdir(parents=True, exist_ok=True)
        save_atomic(payload, out)
        print(f"{tuple(preds.shape)} predictions of {run.label} -> {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``ignitrain export RUN_DIR_OR_FOLDER OUT.pt [--model NAME]`` (issue 14)."""
    folder = find_sharded(args.source)
    out = export_model(folder, args.out, key=args.model)
    print(f"exported  {folder} [{args.model}] -> {out}")
    print("load with torch.load(path, weights_only=True), then model.load_state_dict(...)")
    return 0
