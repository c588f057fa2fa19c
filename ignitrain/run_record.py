"""``output_dir/run.json``: the environment a run ran in, and each start and resume.

Written by rank 0 when the training engine starts (``Events.STARTED``)::

    {"ignitrain": "0.2.0", "torch": "2.13.0+cpu", "ignite": "0.5.5", "python": "3.11.9",
     "git_commit": "3f2c...", "git_dirty": false, "command": "train.py --lr 0.1",
     "host": "gpu-7", "world_size": 2, "device": "cuda:0",
     "starts": [{"kind": "start", "time": "2026-12-01T21:00:00+00:00", "epoch": 0,
                 "iteration": 0, ...}, {"kind": "resume", ...}]}

The top-level fields describe the latest start; every start keeps its own copy in
``starts``, so a run resumed on another machine or with another torch says so.
:func:`run_record_html` renders it for the report.
"""

from __future__ import annotations

import datetime
import html
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import ignite
import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from ignitrain._files import write_atomic
from ignitrain.version import __version__

__all__ = ["environment", "git_commit", "attach_run_record", "read_run_record", "run_record_html"]

FILE = "run.json"


def git_commit(cwd: str | os.PathLike | None = None) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git work tree at ``cwd``; ``(None, None)`` outside one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=5,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None, None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return commit.stdout.strip() or None, dirty


def environment(device: Any = None) -> dict[str, Any]:
    """Versions, git commit of the working directory, command line, host, world size."""
    commit, dirty = git_commit()
    return {
        "ignitrain": __version__,
        "torch": torch.__version__,
        "ignite": ignite.__version__,
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "cwd": os.getcwd(),
        "command": shlex.join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]]),
        "host": socket.gethostname(),
        "world_size": idist.get_world_size(),
        "device": str(device) if device is not None else None,
    }


def read_run_record(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run record of ``output_dir``, or ``None`` when there is none (or unreadable)."""
    path = Path(output_dir) / FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, unreadable, or not JSON (a decode error)
        return None
    return data if isinstance(data, dict) else None


def attach_run_record(engine: Engine, output_dir: str | os.PathLike, *, device: Any = None) -> Any:
    """Append this start (or resume) to ``output_dir/run.json`` at ``STARTED``, rank 0 only.

    A start with ``engine.state.iteration > 0`` (restored from a checkpoint) is a
    ``"resume"``. Returns the registered handler (``engine.remove_event_handler(h,
    Events.STARTED)`` removes it).
    """
    if not isinstance(engine, Engine):
        raise TypeError(f"engine must be an ignite Engine, got {type(engine).__name__}")
    if not isinstance(output_dir, (str, os.PathLike)):
        raise TypeError(f"output_dir must be a path, got {type(output_dir).__name__}")
    path = Path(output_dir) / FILE

    def record(engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        env = environment(device)
        start = {
            "kind": "resume" if engine.state.iteration > 0 else "start",
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "epoch": int(engine.state.epoch),
            "iteration": int(engine.state.iteration),
            **env,
        }
        previous = read_run_record(output_dir) or {}
        starts = list(previous.get("starts", [])) + [start]
        write_atomic(path, json.dumps({**env, "starts": starts}, indent=2))

    engine.add_event_handler(Events.STARTED, record)
    return record


_FIELDS = ("ignitrain", "torch", "ignite", "python", "git_commit", "git_dirty", "command",
           "host", "world_size", "device")  # fmt: skip


def run_record_html(output_dir: str | os.PathLike) -> str | None:
    """The report section of ``run.json``: the environment and a table of starts."""
    record = read_run_record(output_dir)
    if record is None:
        return None
    e = html.escape
    facts = "".join(
        f"<tr><th>{e(k)}</th><td><code>{e(str(record.get(k)))}</code></td></tr>" for k in _FIELDS
    )
    rows = "".join(
        f"<tr><td>{e(str(s.get('kind')))}</td><td>{e(str(s.get('time')))}</td>"
        f"<td class=num>{e(str(s.get('epoch')))}</td><td class=num>{e(str(s.get('iteration')))}"
        f"</td><td>{e(str(s.get('host')))}</td><td class=num>{e(str(s.get('world_size')))}</td>"
        f"<td><code>{e(str(s.get('command')))}</code></td></tr>"
        for s in record.get("starts", [])
        if isinstance(s, dict)
    )
    head = (
        "<tr><th>kind</th><th>time</th><th class=num>epoch</th><th class=num>iteration</th>"
        "<th>host</th><th class=num>processes</th><th>command</th></tr>"
    )
    return f"<table>{facts}</table><h3>Starts</h3><table>{head}{rows}</table>"
