"""The ``ignitrain`` command line: config-driven training, resuming, evaluation, reports.

Run from the directory the job's import paths are relative to (the repository root
for ``examples.models``)::

    ignitrain train examples/configs/digits_cnn.yaml
    ignitrain train examples/configs/digits_cnn.yaml --set train.lr=0.1 --set train.num_epochs=3
    ignitrain train examples/configs/digits_cnn.yaml --nproc 2       # 2 processes (gloo on CPU)
    ignitrain resume runs/digits_cnn                  # continue from the latest checkpoint
    ignitrain evaluate runs/digits_cnn/checkpoints/<file> --data digits:test [--json]
    ignitrain predict runs/digits_cnn --data digits:test --out preds.pt [--argmax] [--targets]
    ignitrain lr-find examples/configs/digits_cnn.yaml
    ignitrain report runs/digits_cnn
    ignitrain export runs/big_model model.pt          # one full state dict from FSDP shards
    python -m ignitrain ...                                           # the same commands

Exit status: 0 success; 2 a mistake in the command line or the job (one message on
stderr, no traceback); 1 an unexpected error (with its traceback); 130 interrupted.
Set ``IGNITRAIN_DEBUG=1`` to see the traceback of every error.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ignitrain.jobs import JobError

__all__ = ["main", "build_parser"]

_PROG = "ignitrain"


# -- argument parsing --------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a job value, e.g. train.lr=0.1 or model.args.hidden=32 "
        "(VALUE is read as YAML; a bare TrainConfig option such as lr=0.1 means train.lr)",
    )


def _add_nproc(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nproc",
        type=_positive_int,
        default=None,
        metavar="N",
        help="run N processes on this machine (gloo on CPU, nccl on GPUs); under torchrun, "
        "leave it out",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all subcommands."""
    from ignitrain import __version__

    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Train, resume, evaluate and report ignitrain jobs described by a "
        "YAML/JSON file.",
    )
    parser.add_argument("--version", action="version", version=f"ignitrain {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    train = commands.add_parser("train", help="train the job in CONFIG (YAML or JSON)")
    train.add_argument("config", metavar="CONFIG", help="job file (.yaml, .yml or .json)")
    _add_set(train)
    _add_nproc(train)
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in output_dir (its checkpoints, history and logs)",
    )
    train.set_defaults(func=cmd_train)

    resume = commands.add_parser(
        "resume", help="continue the run in OUTPUT_DIR from its latest checkpoint"
    )
    resume.add_argument("output_dir", metavar="OUTPUT_DIR")
    _add_set(resume)
    _add_nproc(resume)
    resume.set_defaults(func=cmd_resume)

    evaluate = commands.add_parser("evaluate", help="evaluate a checkpoint and print its metrics")
    evaluate.add_argument(
        "checkpoint",
        metavar="RUN",
        help="a run directory (pick its checkpoint with --checkpoint) or a checkpoint file",
    )
    evaluate.add_argument(
        "--checkpoint",
        dest="which",
        metavar="last|best|PATH",
        default="best",
        help="which checkpoint of RUN: best (default: the best by best_metric; the newest "
        "when the run kept none), last (the newest valid one) or a file",
    )
    evaluate.add_argument(
        "--data",
        metavar="NAME[:SPLIT]",
        default=None,
        help="dataset name (digits, iris, ...) or data factory import path, and split "
        "train|val|test (default: the job's data, test split)",
    )
    evaluate.add_argument(
        "--config", metavar="JOB", default=None, help="job file (default: config.yaml of the run)"
    )
    evaluate.add_argument(
        "--device", default=None, help="device to evaluate on (default: the job's)"
    )
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    evaluate.set_defaults(func=cmd_evaluate)

    _add_predict(commands)

    lr_find = commands.add_parser("lr-find", help="run the learning-rate range test of a job")
    lr_find.add_argument("config", metavar="CONFIG")
    _add_set(lr_find)
    lr_find.add_argument("--start-lr", type=float, default=None, help="lowest LR tried")
    lr_find.add_argument("--end-lr", type=float, default=None, help="highest LR tried")
    lr_find.add_argument("--num-iter", type=_positive_int, default=None, help="steps of the test")
    lr_find.set_defaults(func=cmd_lr_find)

    report = commands.add_parser("report", help="write OUTPUT_DIR/report.html and print a summary")
    report.add_argument("output_dir", metavar="OUTPUT_DIR")
    report.set_defaults(func=cmd_report)

    # issue 14: one consolidated model from a sharded (FSDP) checkpoint
    export = commands.add_parser(
        "export", help="write a sharded checkpoint's model as one full state dict (.pt)"
    )
    export.add_argument("source", metavar="RUN_DIR_OR_FOLDER")
    export.add_argument("out", metavar="OUT.pt")
    export.add_argument("--model", default="model", help="which model of the checkpoint")
    export.set_defaults(func=cmd_export)
    return parser


# -- helpers -----------------------------------------------------------------------------------


def _is_rank_zero() -> bool:
    # under torchrun every process runs this command; only global rank 0 writes files
    return os.environ.get("RANK", "0") == "0"


def _command_line(argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join([_PROG, *args])


def _guard_existing_run(output_dir: Path, resume: Any, overwrite: bool) -> None:
    """Refuse to mix a new run into an old one's checkpoints and history (the same rule
    and file list as the API's, :mod:`ignitrain.run_lock`; config.yaml is rewritten and
    lr_find.png, made before training, is kept)."""
    from ignitrain.run_lock import existing_run, remove_run

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
    from ignitrain.distributed import launch
    from ignitrain.jobs import run_training

    launch(run_training, job, changes, nproc_per_node=nproc, timeout=job["train"]["dist_timeout"])


def _finish(output_dir: Path) -> None:
    """Write the report and print the summary table (rank 0)."""
    from ignitrain.report import summary_table, write_report

    if not _is_rank_zero():
        return
    path = write_report(output_dir)
    print(summary_table(output_dir))
    print(f"report    {path}")


def _latest_checkpoint(output_dir: Path) -> Path | None:
    from ignitrain.handlers.checkpoint import CheckpointStore

    directory = output_dir / "checkpoints"
    return CheckpointStore(directory).latest_path() if directory.is_dir() else None


# -- commands ----------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    """``ignitrain train CONFIG [--set K=V ...] [--nproc N] [--overwrite]``."""
    from ignitrain.jobs import check_job, load_job, write_job

    job = load_job(args.config, args.set)
    output_dir = Path(job["train"]["output_dir"])
    if _is_rank_zero():
        _guard_existing_run(output_dir, job["train"]["resume"], args.overwrite)
    check_job(job)
    if _is_rank_zero():
        write_job(job, output_dir / "config.yaml", command=args.command_line)
    _launch(job, args.nproc, {})
    _test_after_training(job, output_dir)
    _finish(output_dir)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """``ignitrain resume OUTPUT_DIR [--set K=V ...] [--nproc N]``."""
    from ignitrain.jobs import check_job, load_job, write_job

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
    if args.set and _is_rank_zero():
        # record the changed options; resume_allow is for this resume only (resume_rules)
        recorded = {**job, "train": {**job["train"], "resume_allow": []}}
        write_job(recorded, config_path, command=args.command_line)
    _launch(job, args.nproc, {"resume": "latest"})
    _test_after_training(job, output_dir)
    _finish(output_dir)
    return 0


def _find_job_file(checkpoint: Path) -> Path | None:
    for directory in (checkpoint.parent.parent, checkpoint.parent):
        if (directory / "config.yaml").is_file():
            return directory / "config.yaml"
    return None


def _resolve_checkpoint(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        from ignitrain.resume import find_checkpoint_in_dir

        try:
            return find_checkpoint_in_dir(path)
        except FileNotFoundError as exc:
            raise JobError(str(exc)) from None
    if not path.is_file():
        raise JobError(f"checkpoint {text!r} does not exist")
    return path


def _parse_data_arg(text: str | None) -> tuple[str | None, str]:
    if text is None:
        return None, "test"
    name, _, split = text.partition(":")
    split = split or "test"
    if split not in ("train", "val", "test"):
        raise JobError(f"--data {text!r}: split {split!r} must be train, val or test")
    return (name.strip() or None), split


def _evaluation_data(job: dict[str, Any], data_arg: str | None) -> tuple[Any, Any, str]:
    """``(job data, dataset to evaluate, label)``; a dataset name that is the job's data
    keeps the job's arguments (seed, image layout), so the split is the one trained on."""
    import copy

    from ignitrain.jobs import _resolve_spec, build_data

    name, split = _parse_data_arg(data_arg)
    job_data = build_data(job)
    data = job_data
    label_name = job["data"]["factory"]
    if name is not None:
        spec = _resolve_spec(name, "data", "factory", "--data")
        if spec["factory"] != job["data"]["factory"]:
            other = copy.deepcopy(job)
            other["data"] = spec
            data = build_data(other)
            label_name = spec["factory"]
    chosen = getattr(data, split)
    if chosen is None:
        raise JobError(f"--data: {label_name} has no {split!r} split (it is empty)")
    return job_data, chosen, f"{label_name}:{split}"


def _evaluate_checkpoint(
    job: dict[str, Any], chosen: Any, data_arg: str | None, device: str | None = None
) -> dict[str, Any]:
    """Build the job's trainer, load ``chosen``'s weights and evaluate on ``data_arg``."""
    from ignitrain.handlers.checkpoint import load_checkpoint
    from ignitrain.jobs import build_trainer

    job_data, dataset, label = _evaluation_data(job, data_arg)
    # evaluation writes nothing: no output_dir, no TensorBoard, no resume of its own
    changes: dict[str, Any] = {"output_dir": None, "resume": None, "tensorboard": False}
    changes["progress_bar"] = False
    changes["verbose"] = False
    if device:
        changes["device"] = device
    trainer = build_trainer(job, train_changes=changes, data=job_data)
    try:
        # the weights only: evaluating is not resuming (no engine state, no "Resumed from")
        payload = load_checkpoint(chosen.path, **trainer.models)
    except Exception as exc:  # a corrupt or foreign file is the user's input, not a crash
        raise JobError(f"cannot load checkpoint {str(chosen.path)!r}: {exc}") from None
    try:
        metrics = trainer.evaluate(dataset)
    except RuntimeError as exc:
        if label.split(":")[0] == job["data"]["factory"]:
            raise  # the job's own data failing is not a mismatch: show the traceback
        first = str(exc).strip().splitlines()[0]
        raise JobError(f"evaluating on {label} failed, does it match the model? {first}") from None
    return {
        "checkpoint": str(chosen.path),
        "which": chosen.which,
        "chosen": chosen.describe(),
        "data": label,
        "num_samples": len(dataset) if hasattr(dataset, "__len__") else None,
        "epoch": int(payload.get("epoch") or 0),
        "iteration": int(payload.get("iteration") or 0),
        "metrics": metrics,
    }


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``ignitrain evaluate RUN [--checkpoint best|last|PATH] [--data NAME[:SPLIT]] [--json]``."""
    from ignitrain.checkpoint_choice import choose_checkpoint
    from ignitrain.jobs import load_job

    try:
        chosen = choose_checkpoint(args.checkpoint, args.which)
    except FileNotFoundError as exc:
        raise JobError(str(exc)) from None
    checkpoint = chosen.path
    job_file = Path(args.config) if args.config else _find_job_file(checkpoint)
    if job_file is None:
        raise JobError(
            f"no config.yaml next to {str(checkpoint)!r}: pass the job file with --config JOB.yaml"
        )
    job = load_job(job_file)
    result = _evaluate_checkpoint(job, chosen, args.data, args.device)
    if chosen.note:
        print(f"note: {chosen.note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"checkpoint {chosen.describe()}: {checkpoint}")
        print(f"           epoch {result['epoch']}, iteration {result['iteration']}")
        print(f"data       {result['data']} ({result['num_samples']} samples)")
        metrics = result["metrics"]
        width = max((len(k) for k in metrics), default=6)
        for key, value in metrics.items():
            print(f"{key:<{width}}  {value:.6g}")
    if _is_rank_zero() and result["data"].endswith(":test") and chosen.which != "path":
        from ignitrain.evaluation_record import write_evaluation

        write_evaluation(_run_dir_of(checkpoint), result)
    return 0


def _test_after_training(job: dict[str, Any], output_dir: Path) -> None:
    """Evaluate the best checkpoint on the job's test split, print and record it."""
    from ignitrain.checkpoint_choice import choose_checkpoint
    from ignitrain.evaluation_record import write_evaluation
    from ignitrain.jobs import build_data

    if not _is_rank_zero() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return  # under torchrun the process group is the launcher's: evaluate afterwards
    if getattr(build_data(job), "test", None) is None:
        return
    try:
        chosen = choose_checkpoint(output_dir, "best", mode=job["train"].get("best_mode"))
    except FileNotFoundError:
        return
    # printed by the summary table that follows (it reads evaluation.json)
    write_evaluation(output_dir, _evaluate_checkpoint(job, chosen, None))


def _run_dir_of(checkpoint: Path) -> Path:
    return (
        checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    )


def _add_predict(commands: Any) -> None:
    predict = commands.add_parser(
        "predict", help="write a checkpoint's predictions on a dataset to a .pt file"
    )
    predict.add_argument(
        "checkpoint", metavar="RUN_DIR", help="a run directory (its latest checkpoint) or a file"
    )
    predict.add_argument(
        "--data", metavar="NAME[:SPLIT]", default=None,
        help="as for evaluate (default: the job's data, test split)",
    )  # fmt: skip
    predict.add_argument("--out", required=True, metavar="PATH", help="output file (.pt)")
    predict.add_argument("--argmax", action="store_true", help="class indices, not logits")
    predict.add_argument("--targets", action="store_true", help="also store the targets")
    predict.add_argument("--ema", action="store_true", help="the EMA weights (ema_decay runs)")
    predict.add_argument("--config", metavar="JOB", default=None, help="job file")
    predict.add_argument("--device", default=None, help="device to predict on")
    predict.set_defaults(func=cmd_predict)


def _restored_trainer(args: argparse.Namespace) -> tuple[Any, Any, str, Path]:
    """The job's trainer restored from ``args.checkpoint``, the dataset and its label."""
    from ignitrain.handlers.checkpoint import safe_load
    from ignitrain.jobs import build_trainer, load_job

    checkpoint = _resolve_checkpoint(args.checkpoint)
    job_file = Path(args.config) if args.config else _find_job_file(checkpoint)
    if job_file is None:
        raise JobError(
            f"no config.yaml next to {str(checkpoint)!r}: pass the job file with --config JOB.yaml"
        )
    job = load_job(job_file)
    from ignitrain.handlers.sharded import is_sharded_checkpoint, read_sharded_meta

    try:
        # a corrupt or foreign file is the user's input, not a crash (issue 14: or folder)
        (read_sharded_meta if is_sharded_checkpoint(checkpoint) else safe_load)(checkpoint)
    except Exception as exc:
        raise JobError(f"cannot read checkpoint {str(checkpoint)!r}: {exc}") from None
    job_data, dataset, label = _evaluation_data(job, args.data)
    changes: dict[str, Any] = {"output_dir": None, "resume": None, "tensorboard": False}
    changes["progress_bar"] = False
    if args.device:
        changes["device"] = args.device
    trainer = build_trainer(job, train_changes=changes, data=job_data)
    trainer.resume(checkpoint)
    return trainer, dataset, label, checkpoint


def cmd_predict(args: argparse.Namespace) -> int:
    """``ignitrain predict RUN_DIR --data NAME[:SPLIT] --out PATH [--argmax] [--targets]``.

    Writes ``{"predictions", "targets"?, "checkpoint", "data"}`` with ``torch.save``
    (readable with ``torch.load(path, weights_only=True)``).
    """
    import torch

    trainer, dataset, label, checkpoint = _restored_trainer(args)
    try:
        result = trainer.predict(
            dataset, return_targets=args.targets, argmax=args.argmax, ema=args.ema
        )
    except ValueError as exc:
        raise JobError(str(exc)) from None
    preds, targets = result if args.targets else (result, None)
    payload: dict[str, Any] = {"predictions": preds, "checkpoint": str(checkpoint), "data": label}
    if targets is not None:
        payload["targets"] = targets
    out = Path(args.out)
    if _is_rank_zero():
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, out)
        print(f"{tuple(preds.shape)} predictions of {label} -> {out}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    """``ignitrain lr-find CONFIG [--set K=V ...]``: suggest a learning rate, plot the curve."""
    from ignitrain.jobs import build_trainer, check_job, configure_logging, load_job

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
    from ignitrain.lr_suggest import judge_lr_curve

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
    from ignitrain.report import summary_table, write_report

    try:
        path = write_report(args.output_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise JobError(str(exc)) from None
    print(summary_table(args.output_dir))
    print(f"report    {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``ignitrain export RUN_DIR_OR_FOLDER OUT.pt [--model NAME]`` (issue 14)."""
    from ignitrain.handlers.sharded import export_model, find_sharded

    folder = find_sharded(args.source)
    out = export_model(folder, args.out, key=args.model)
    print(f"exported  {folder} [{args.model}] -> {out}")
    print("load with torch.load(path, weights_only=True), then model.load_state_dict(...)")
    return 0


# -- entry point -------------------------------------------------------------------------------


def _user_error_types() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [JobError]
    try:
        from ignitrain.handlers.checkpoint import CheckpointError

        found.append(CheckpointError)
    except ImportError:
        pass
    return tuple(found)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 user error, 1 unexpected)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = _command_line(argv)
    debug = os.environ.get("IGNITRAIN_DEBUG", "") not in ("", "0")
    try:
        from ignitrain.jobs import configure_logging

        configure_logging()
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _user_error_types()):
            if debug:
                traceback.print_exc()
            print(f"{_PROG} {args.command}: error: {exc}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(
            f"{_PROG} {args.command}: unexpected error ({type(exc).__name__}); the traceback "
            "above shows where",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover - python -m ignitrain.cli
    sys.exit(main())
