"""What every ``ignitrain`` command shares: the program name, rank 0, the command line."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

__all__ = ["PROG", "command_line", "is_rank_zero"]

PROG = "ignitrain"


def is_rank_zero() -> bool:
    """Whether this process writes files and prints results.

    Read from the environment, not from ``idist``: under torchrun every process runs the
    command, and the CLI decides before (and after) any process group exists.
    """
    return os.environ.get("RANK", "0") == "0"


def command_line(argv: Sequence[str] | None) -> str:
    """The command as typed (``ignitrain train job.yaml ...``), recorded in config.yaml."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join([PROG, *args])
