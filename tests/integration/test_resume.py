"""Exact resume: a run killed with SIGKILL and resumed equals an uninterrupted run, bit for bit."""

import json
import signal
import sys
from functools import partial
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests._pool import job_pool
from tests.conftest import assert_same_tree
from tests.integration._jobs import load_final, run_job

JOB = Path(__file__).with_name("_resume_job.py")
pytestmark = pytest.mark.slow


def _job(out, workers, *extra, check=True):
    return run_job([sys.executable, JOB, out, str(workers), *extra], timeout=300, check=check)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run per DataLoader set-up, both at once (one core each), that
    every interrupted-and-resumed run of this module is compared with."""
    outs = {workers: tmp_path_factory.mktemp(f"reference{workers}") for workers in (0, 2)}
    with job_pool({w: partial(_job, out, w) for w, out in outs.items()}) as futures:
        for future in futures.values():
            future.result()
    return {workers: load_final(out) for workers, out in outs.items()}


# Resumes mid-epoch (from 10) and at the epoch boundary (20), with DataLoader workers.
# Without workers, the same two resumes are the SIGTERM test's (from 14 and from 20) and
# the kill itself (no handler runs, the steps after the checkpoint dropped from History
# and TensorBoard) is this test's: a SIGKILL without workers repeated both (4 jobs).
@pytest.mark.parametrize("workers", [2])
@pytest.mark.parametrize("kill_at", [17, 25])
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
    got = load_final(tmp_path)
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
