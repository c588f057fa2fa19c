"""The arguments of every ``ignitrain`` subcommand, and which command each one runs."""

from __future__ import annotations

import argparse
from typing import Any

from ignitrain.cli.common import PROG
from ignitrain.cli.inference import cmd_evaluate, cmd_export, cmd_predict
from ignitrain.cli.tools import cmd_lr_find, cmd_report
from ignitrain.cli.training import cmd_resume, cmd_train
from ignitrain.version import __version__

__all__ = ["build_parser", "positive_int"]


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 1."""
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
        type=positive_int,
        default=None,
        metavar="N",
        help="run N processes on this machine (gloo on CPU, nccl on GPUs); under torchrun, "
        "leave it out",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all subcommands (each sets ``func``, the command to run)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train, resume, evaluate and report ignitrain jobs described by a "
        "YAML/JSON file.",
    )
    parser.add_argument("--version", action="version", version=f"ignitrain {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    _add_train(commands)
    _add_resume(commands)
    _add_evaluate(commands)
    _add_predict(commands)
    _add_lr_find(commands)
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


def _add_train(commands: Any) -> None:
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


def _add_resume(commands: Any) -> None:
    resume = commands.add_parser(
        "resume", help="continue the run in OUTPUT_DIR from its latest checkpoint"
    )
    resume.add_argument("output_dir", metavar="OUTPUT_DIR")
    _add_set(resume)
    _add_nproc(resume)
    resume.set_defaults(func=cmd_resume)


def _add_evaluate(commands: Any) -> None:
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


def _add_lr_find(commands: Any) -> None:
    lr_find = commands.add_parser("lr-find", help="run the learning-rate range test of a job")
    lr_find.add_argument("config", metavar="CONFIG")
    _add_set(lr_find)
    lr_find.add_argument("--start-lr", type=float, default=None, help="lowest LR tried")
    lr_find.add_argument("--end-lr", type=float, default=None, help="highest LR tried")
    lr_find.add_argument("--num-iter", type=positive_int, default=None, help="steps of the test")
    lr_find.set_defaults(func=cmd_lr_find)
