"""Exact resume: a run killed with SIGKILL and resumed equals an uninterrupted run, bit for bit."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import assert_same_tree

JOB = Path(__file__).with_name("_resume_job.py")
pytestmark = pytest.mark.slow


def _job(out, workers, *extra, check=True):
    proc = subprocess.run(
        [sys.executable, str(JOB), str(out), str(workers), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"job failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def _final(out):
    return torch.load(Path(out) / "final.pt", weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    runs = {}
    for workers in (0, 2):
        out = tmp_path_factory.mktemp(f"reference{workers}")
        _job(out, workers)
        runs[workers] = _final(out)
    return runs


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(
    "kill_at", [17, 25]
)  # resumes mid-epoch (from 10) and at the epoch boundary (20)
def test_sigkill_then_resume_equals_uninterrupted(reference, tmp_path, workers, kill_at):
    killed = _job(tmp_path, workers, "--kill-at", str(kill_at), check=False)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "final.pt").exists()
    _job(tmp_path, workers, "--resume")
    _assert_continues(tmp_path, reference[workers])


# acted on after the next iteration: mid-epoch (14), and at an epoch's last iteration (20),
# where the checkpoint waits for that epoch's validation and history
@pytest.mark.parametrize("term_at", [13, 19])
def test_sigterm_checkpoints_exits_143_and_resumes_exactly(reference, tmp_path, term_at):
    stopped = _job(tmp_path, 0, "--term-at", str(term_at), check=False)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "Preempted (received SIGTERM)" in stopped.stderr
    preempt = sorted((tmp_path / "checkpoints").glob("checkpoint_preempt_*.pt"))
    assert [p.name for p in preempt] == [f"checkpoint_preempt_iter{term_at + 1:08d}.pt"]
    _job(tmp_path, 0, "--resume")
    _assert_continues(tmp_path, reference[0])


def test_sigkill_during_the_final_last_write_then_resume_writes_it(reference, tmp_path):
    killed = _job(tmp_path, 0, "--kill-in-last", check=False)
    assert killed.returncode == -signal.SIGKILL
    ckpts = tmp_path / "checkpoints"
    assert not list(ckpts.glob("checkpoint_last_*.pt"))
    assert list(ckpts.glob(".*.tmp"))  # the orphan the kill left
    resumed = _job(tmp_path, 0, "--resume")
    assert "wrote the missing" in resumed.stderr
    assert [p.name for p in ckpts.glob("checkpoint_last_*.pt")] == [
        "checkpoint_last_iter00000060.pt"
    ]
    assert not list(ckpts.glob(".*.tmp"))
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["meta"]["stop_reason"] == "completed"
    _assert_continues(tmp_path, reference[0])


def _assert_continues(tmp_path, want):
    got = _final(tmp_path)
    assert got["iteration"] == want["iteration"]
    assert_same_tree(got["model"], want["model"], "model")
    assert_same_tree(got["optimizer"], want["optimizer"], "optimizer")
    assert_same_tree(got["history"], want["history"], "history")
    # TensorBoard: the killed run's steps after its checkpoint are purged, steps never go back
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/batch_loss")]
    assert steps == sorted(set(steps))
    assert [e.value for e in acc.Scalars("val/accuracy")] == pytest.approx(
        want["history"]["series"]["val/accuracy"]["values"], rel=1e-6
    )
