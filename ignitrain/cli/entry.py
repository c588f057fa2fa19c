"""``main``: run one ``ignitrain`` command and turn its outcome into an exit status."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

from ignitrain.cli.common import PROG, command_line
from ignitrain.cli.parser import build_parser
from ignitrain.errors import CheckpointError, JobError
from ignitrain.jobs import configure_logging

__all__ = ["USER_ERRORS", "main"]

USER_ERRORS: tuple[type[BaseException], ...] = (JobError, CheckpointError)
"""Errors that are the user's input (a job, a command line, a checkpoint file): one
message and exit status 2, no traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 user error, 1 unexpected,
    130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = command_line(argv)
    debug = os.environ.get("IGNITRAIN_DEBUG", "") not in ("", "0")
    try:
        configure_logging()
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if debug:
            traceback.print_exc()
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        traceback.print_exc()
        print(
            f"{PROG} {args.command}: unexpected error ({type(exc).__name__}); the traceback "
            "above shows where",
            file=sys.stderr,
        )
        return 1
