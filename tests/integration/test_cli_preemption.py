"""``ignitrain train --nproc 2`` (the CLI, a real 2-process gloo job from a job file)
preempted by SIGTERM to its whole process group, as Slurm and Kubernetes send it
(issue 12 item 3): every rank stops at the same iteration, the preempt checkpoint is
written, the CLI exits 143, and ``ignitrain resume`` finishes the run into exactly the
weights and history of an uninterrupted one.

The job's model is :class:`SlowMLP` (``_slow_model.py`` written into the test's folder
and put on ``PYTHONPATH`` for the spawned ranks): each training forward sleeps a little,
so the signal lands mid-training, and records on each rank how many training forwards
(= iterations) it ran.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_same_tree

pytestmark = pytest.mark.slow

_TIMEOUT = 300  # seconds for one CLI job; a hang fails the test
_EPOCHS = 3  # 20 iterations of batch 64 each (1257 digits)

_MODEL = '''
import os
import time
from pathlib import Path

import torch.distributed as dist
from torch import nn


class SlowMLP(nn.Module):
    """64 -> 32 -> 10 with a sleep in each training forward; counts them per rank."""

    def __init__(self, sleep: float = 0.05):
        super().__init__()
        self.sleep = sleep
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10))
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            rank = dist.get_rank() if dist.is_initialized() else 0
            marks = Path(os.environ["SLOW_MODEL_MARKS"])
            (marks / f"rank{rank}.calls").write_text(str(self.calls))
            if self.calls == 3 and rank == 0:
                (marks / "started").write_text("")
            time.sleep(self.sleep)
        return self.net(x)
'''


def _job(folder: Path, out: Path) -> Path:
    job = {
        "flavor": "classification",
        "model": {"class": "_slow_model.SlowMLP", "args": {"sleep": 0.05}},
        "data": {"factory": "ignitrain.datasets.digits", "args": {"seed": 0, "image": False}},
        "train": {
            "num_epochs": _EPOCHS,
            "batch_size": 64,
            "optimizer": "sgd",
            "lr": 0.05,
            "momentum": 0.9,
            "seed": 0,
            "output_dir": str(out),
            "progress_bar": False,
            "tensorboard": False,
            "log_every": 5,
        },
    }
    path = folder / f"{out.name}.json"
    path.write_text(json.dumps(job))
    return path


def _env(folder: Path, marks: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")
        and k != "MASTER_PORT"
    }
    env["PYTHONPATH"] = os.pathsep.join(
        [str(folder), str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")]
    )
    env["SLOW_MODEL_MARKS"] = str(marks)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ignitrain", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # the CLI leads a process group, as a Slurm job step does
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"CLI job hung: {proc.communicate()[1][-4000:]}")
    return proc.returncode, err


def _last(out: Path) -> dict:
    (path,) = sorted((out / "checkpoints").glob("checkpoint_last_*.pt"))
    return torch.load(path, weights_only=True)


def _comparable(history: dict) -> dict:
    """The History state without the run's wall time (a measurement no interrupted run
    can share, as in tests/integration/_dist_job.py) and without its journal's file
    description (another path; its records hold per-record times)."""
    meta = {k: v for k, v in history.get("meta", {}).items() if k != "wall_time_s"}
    return {**{k: v for k, v in history.items() if k != "journal"}, "meta": meta}


@pytest.fixture
def folder(tmp_path) -> Path:
    (tmp_path / "_slow_model.py").write_text(textwrap.dedent(_MODEL))
    return tmp_path


def test_sigterm_to_the_cli_process_group_checkpoints_all_ranks_and_resume_finishes_it(
    folder,
):
    total = _EPOCHS * 20
    # the uninterrupted run
    ref_marks = folder / "ref_marks"
    ref_marks.mkdir()
    ref_out = folder / "ref"
    ref_env = _env(folder, ref_marks)
    code, err = _finish(_cli("train", str(_job(folder, ref_out)), "--nproc", "2", env=ref_env))
    assert code == 0, err[-4000:]

    # the preempted run: SIGTERM to the whole process group (launcher and both ranks)
    marks = folder / "marks"
    marks.mkdir()
    out = folder / "run"
    env = _env(folder, marks)
    proc = _cli("train", str(_job(folder, out)), "--nproc", "2", env=env)
    deadline = time.monotonic() + _TIMEOUT
    while not (marks / "started").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"job ended or hung before training: {proc.communicate()[1][-4000:]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    code, err = _finish(proc)
    assert code == 143, err[-4000:]
    calls = [int((marks / f"rank{r}.calls").read_text()) for r in (0, 1)]
    assert calls[0] == calls[1], f"ranks stopped at different iterations: {calls}"
    (preempt,) = sorted((out / "checkpoints").glob("checkpoint_preempt_*.pt"))
    iteration = torch.load(preempt, weights_only=True)["iteration"]
    assert iteration == calls[0] and 3 <= iteration < total, (calls, iteration)
    assert preempt.name == f"checkpoint_preempt_iter{iteration:08d}.pt"
    assert not list(out.rglob("*.tmp"))
    assert "Preempted (received SIGTERM)" in err

    # `ignitrain resume` finishes it: the result equals the uninterrupted run
    code, err = _finish(_cli("resume", str(out), "--nproc", "2", env=env))
    assert code == 0, err[-4000:]
    got, want = _last(out), _last(ref_out)
    assert got["iteration"] == want["iteration"] == total
    assert_same_tree(got["model"], want["model"], "model")
    assert_same_tree(got["optimizer"], want["optimizer"], "optimizer")
    assert got["history"]["journal"]["records"] == want["history"]["journal"]["records"]
    assert_same_tree(_comparable(got["history"]), _comparable(want["history"]), "history")
