"""Running the integration job scripts from the tests: one way to start a job, bound it in
time and read what it saved.

Every job runs in a session of its own: a job that hangs is killed with its whole process
group (its ranks and DataLoader workers too) and fails the test instead of blocking the
suite, and a job may SIGKILL its own group as a dead node would.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import torch

__all__ = ["load_final", "run_job"]


def run_job(
    cmd: Sequence[str | os.PathLike],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``cmd`` in a new session and return it finished.

    Args:
        cmd: the command line.
        timeout: seconds; past them the whole session is killed and the test fails.
        env: the environment (default: this process's).
        check: raise ``AssertionError`` with the end of stderr on a non-zero exit.
    """
    cmd = [os.fspath(c) for c in cmd]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=None if env is None else dict(env),
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"job hung (killed after {timeout} s):\n{err[-4000:]}")
    if check and proc.returncode != 0:
        raise AssertionError(f"job failed ({proc.returncode}):\n{err[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def load_final(out: str | os.PathLike) -> dict:
    """The ``final.pt`` a job saved at its end into its output dir."""
    return torch.load(Path(out) / "final.pt", weights_only=True)
