"""Classification on 2 real gloo processes: spawned by ``ignitrain.launch`` and under torchrun.

Each job is ``_dist_job.py`` in a subprocess of its own session (a hang is killed with
its whole process group, and the job can SIGKILL itself the same way). Checked: equal
weights on every rank, one writer, reduced metrics equal to a hand computation over
the whole validation set, stops agreed by all ranks (validation rule, a NaN on one
rank, SIGTERM to one rank), and exact resume of a preempted 2-process run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ignitrain import datasets
from tests.conftest import assert_same_tree
from tests.integration._jobs import run_job

JOB = Path(__file__).with_name("_dist_job.py")
sys.path.insert(0, str(JOB.parent))
pytestmark = pytest.mark.slow

_JOB_TIMEOUT = 240  # seconds; a hang fails the test instead of blocking the suite
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*_TORCHRUN_VARS, "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(cmd: list[str], check: bool = False) -> subprocess.CompletedProcess:
    """Run ``cmd`` in a new session; on timeout kill the whole session and fail."""
    return run_job(cmd, timeout=_JOB_TIMEOUT, env=_env(), check=check)


def _spawn(out: Path, *extra: str, nproc: int = 2, check: bool = True):
    return _run([sys.executable, str(JOB), str(out), "--nproc", str(nproc), *extra], check)


def _torchrun(out: Path, *extra: str, check: bool = True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return _run([*cmd, str(JOB), str(out), *extra], check)


def _records(out: Path, name: str = "rank") -> list[dict]:
    paths = sorted((out / "out").glob(f"{name}*.pt"))
    return [torch.load(p, weights_only=True) for p in paths]


def _series(record: dict, name: str) -> list:
    return record["history"]["series"][name]["values"]


def _hand_metrics(state_dict: dict) -> dict[str, float]:
    """Accuracy and mean cross-entropy of the model over the whole val set, one process."""
    from _dist_job import _model

    model = _model()
    model.load_state_dict(state_dict)
    model.eval()
    val = datasets.digits(seed=0, image=False).val
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = torch.as_tensor([int(val[i][1]) for i in range(len(val))])
    with torch.no_grad():
        logits = model(x)
    return {
        "accuracy": (logits.argmax(1) == y).double().mean().item(),
        "loss": F.cross_entropy(logits, y).item(),
    }


def _check_one_writer(out: Path, records: list[dict]) -> None:
    # rank 1 wrote nothing under output_dir (an audit hook saw every write); rank 0 did
    assert records[1]["written"] == []
    written = records[0]["written"]
    assert any(p.startswith("checkpoints/") for p in written)
    assert any(p.startswith("tb/") for p in written) and any("history" in p for p in written)
    assert len(list((out / "tb").iterdir())) == 1, "one TensorBoard event file, one writer"
    assert not list(out.rglob("*.tmp")), "no temporary file left behind"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 2-process run spawned by ignitrain.launch."""
    out = tmp_path_factory.mktemp("spawned")
    _spawn(out)
    return out


@pytest.fixture(scope="module")
def preempted(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A 2-process run whose rank 1 (only) receives SIGTERM after iteration 13."""
    out = tmp_path_factory.mktemp("preempted")
    return out, _spawn(out, "--term-at", "13", check=False)


def _check_training_run(out: Path) -> list[dict]:
    records = _records(out)
    assert [r["rank"] for r in records] == [0, 1]
    assert all(r["world_size"] == 2 and r["iteration"] == 60 for r in records)
    assert_same_tree(records[0]["model"], records[1]["model"], "model")
    assert_same_tree(records[0]["optimizer"], records[1]["optimizer"], "optimizer")
    _check_one_writer(out, records)
    manual = torch.load(out / "manual" / "checkpoint.pt", weights_only=True)
    assert len(manual["rng"]["ranks"]) == 2  # both ranks' streams, one file
    assert_same_tree(manual["model"], records[0]["model"], "save_checkpoint model")
    hand = _hand_metrics(records[0]["model"])
    for r in records:
        # trainer.evaluate: each rank its shard, reduced -> the whole set on every rank
        assert r["evaluate"]["accuracy"] == pytest.approx(hand["accuracy"], abs=1e-12)
        assert r["evaluate"]["loss"] == pytest.approx(hand["loss"], rel=1e-5)
    # the last validation (after the last epoch, same weights) that History reports
    assert _series(records[0], "val/accuracy")[-1] == pytest.approx(hand["accuracy"], abs=1e-12)
    assert _series(records[0], "val/loss")[-1] == pytest.approx(hand["loss"], rel=1e-5)
    return records


def test_spawned_run_equal_weights_one_writer_reduced_metrics(reference):
    _check_training_run(reference)


def test_torchrun_run_is_the_same_run(reference, tmp_path):
    _torchrun(tmp_path)
    records = _check_training_run(tmp_path)
    # the same script, launched the other way, trains the same weights bit for bit
    assert_same_tree(records[0]["model"], _records(reference)[0]["model"], "model")


def test_validation_stop_is_taken_by_every_rank_at_once(tmp_path):
    # no epoch improves val loss by 10: early stopping ends the run after epoch 2 of 3
    options = (
        '{"early_stopping_patience": 1, "early_stopping_min_delta": 10.0, "best_metric": "loss"}'
    )
    _spawn(tmp_path, "--options", options)
    records = _records(tmp_path)
    assert [(r["iteration"], r["epoch"]) for r in records] == [(40, 2), (40, 2)]
    assert records[0]["stop_reason"] == records[1]["stop_reason"]
    assert "early" in str(records[0]["stop_reason"]).lower()
    assert_same_tree(records[0]["model"], records[1]["model"], "model")


def test_nan_on_one_rank_stops_both_at_that_iteration(tmp_path):
    _spawn(tmp_path, "--nan-at", "7", "--fault-rank", "1")
    records = _records(tmp_path)
    assert [r["iteration"] for r in records] == [7, 7]
    assert [r["stop_reason"] for r in records] == ["non_finite_loss"] * 2
    # the NaN update was applied on neither rank: weights equal and finite
    assert_same_tree(records[0]["model"], records[1]["model"], "model")
    assert all(torch.isfinite(t).all() for t in records[0]["model"].values())


def test_sigterm_to_one_rank_stops_both_and_checkpoints(preempted):
    out, proc = preempted
    # The signal reached rank 1 after iteration 13; both ranks agreed at iteration 14.
    # Each rank logs where it stopped before it exits (the spawning parent may terminate
    # a rank as soon as the other one exited, so the ranks' own records are not relied on).
    assert "Preempted (received SIGTERM): checkpoint written after iteration 14 " in proc.stderr
    assert (
        "Preempted (another process was preempted): checkpoint written after iteration 14 "
        in proc.stderr
    )
    assert proc.stderr.count("Preempted (") == 2
    assert not list((out / "out").glob("rank*.pt")), "training must not go on after preemption"
    preempt = sorted((out / "checkpoints").glob("checkpoint_preempt_*.pt"))
    assert [p.name for p in preempt] == ["checkpoint_preempt_iter00000014.pt"]
    # Both ranks exit with status 143, and so does the launcher (issue 12: it exited 1,
    # torch's join raising ProcessExitedException for the first rank's 143).
    assert proc.returncode == 143, proc.stderr[-3000:]
    partial = _records(out, "partial")
    assert [r["iteration"] for r in partial] == [14, 14]


def test_preempted_run_resumed_on_two_processes_equals_uninterrupted(
    preempted, reference, tmp_path
):
    out = tmp_path / "run"
    shutil.copytree(preempted[0], out)
    shutil.rmtree(out / "out")
    _spawn(out, "--resume")
    got, want = _records(out), _records(reference)
    assert [r["iteration"] for r in got] == [60, 60]
    assert_same_tree(got[0]["model"], got[1]["model"], "model across ranks")
    assert_same_tree(got[0]["model"], want[0]["model"], "model")
    assert_same_tree(got[0]["optimizer"], want[0]["optimizer"], "optimizer")
    # every rank's RNG streams and epoch sums came back, so the epoch means match too
    assert_same_tree(got[0]["history"], want[0]["history"], "history")


def test_preempted_run_resumed_on_one_process_warns_and_finishes(preempted, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(preempted[0], out)
    shutil.rmtree(out / "out")
    proc = _spawn(out, "--resume", nproc=1)
    assert "Resuming a run saved with 2 process(es) on 1" in proc.stderr
    (record,) = _records(out)
    assert record["world_size"] == 1 and record["iteration"] == 60
    assert all(torch.isfinite(t).all() for t in record["model"].values())
    assert _series(record, "val/accuracy")[-1] > 0.5


def test_preempted_mid_accumulation_group_resumes_exactly_on_two_processes(tmp_path):
    # With 2 micro-batches per step, the stop agreed after iteration 13 falls inside a
    # group: each rank's unsynced gradients (DDP no_sync) must come back as they were.
    options = '{"grad_accumulation_steps": 2}'
    reference = tmp_path / "reference"
    _spawn(reference, "--options", options)
    run = tmp_path / "run"
    stopped = _spawn(run, "--options", options, "--term-at", "12", check=False)
    assert "checkpoint written after iteration 13 " in stopped.stderr, stopped.stderr[-3000:]
    saved = torch.load(
        run / "checkpoints" / "checkpoint_preempt_iter00000013.pt", weights_only=True
    )
    pending = saved["optimizer_step"]
    assert pending["pending"] and len(pending["ranks"]) == 2
    # the ranks saw different micro-batches: their accumulated gradients differ
    assert not torch.equal(pending["ranks"][0]["grads"][0], pending["ranks"][1]["grads"][0])
    shutil.rmtree(run / "out")
    _spawn(run, "--options", options, "--resume")
    got, want = _records(run), _records(reference)
    assert [r["iteration"] for r in got] == [60, 60]
    assert_same_tree(got[0]["model"], want[0]["model"], "model")
    assert_same_tree(got[1]["optimizer"], want[1]["optimizer"], "optimizer")
    assert_same_tree(got[0]["history"], want[0]["history"], "history")


# -- preemption of the launcher (issue 12 item 3) ---------------------------------------

_SLOW_JOB = ("--options", '{"num_epochs": 6}', "--mark-at", "3", "--slow", "0.05")


def _start(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(JOB), str(out), "--nproc", "2", *_SLOW_JOB, *extra]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,  # the launcher leads a process group, as under Slurm
    )


def _wait_started(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + _JOB_TIMEOUT
    while not (out / "out" / "started").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"job ended or hung before training: {proc.communicate()[1][-3000:]}")
        time.sleep(0.05)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=_JOB_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"job hung after the signal: {proc.communicate()[1][-3000:]}")
    return proc.returncode, err


def _check_preempted_together(out: Path, err: str, total: int = 120) -> int:
    partial = _records(out, "partial")
    assert [r["rank"] for r in partial] == [0, 1], err[-3000:]
    (iteration,) = {r["iteration"] for r in partial}
    assert 3 <= iteration < total, "stopped mid-training"
    preempt = sorted((out / "checkpoints").glob("checkpoint_preempt_*.pt"))
    assert [p.name for p in preempt] == [f"checkpoint_preempt_iter{iteration:08d}.pt"]
    saved = torch.load(preempt[0], weights_only=True)
    assert saved["iteration"] == iteration
    assert not list(out.rglob("*.tmp"))
    return iteration


@pytest.mark.parametrize(
    ("signum", "status", "to_group"),
    [
        (signal.SIGTERM, 143, False),
        (signal.SIGTERM, 143, True),
        (signal.SIGUSR1, 143, False),  # one preemption status (issue 12; was 138)
    ],
    ids=["sigterm-launcher", "sigterm-group", "sigusr1-launcher"],
)
def test_signal_to_the_launcher_checkpoints_every_rank_at_one_iteration(
    tmp_path, signum, status, to_group
):
    # Before: the launcher died of the signal (-15), torch's PR_SET_PDEATHSIG killed the
    # ranks with SIGINT, and no preempt checkpoint was written (5 of 6 tries).
    out = tmp_path / "run"
    proc = _start(out)
    _wait_started(proc, out)
    if to_group:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    code, err = _finish(proc)
    assert code == status, err[-3000:]
    _check_preempted_together(out, err)


def test_second_sigterm_to_the_group_during_the_save_loses_nothing(tmp_path):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_started(proc, out)
    os.killpg(proc.pid, signal.SIGTERM)
    time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGTERM)
    code, err = _finish(proc)
    assert code == 143, err[-3000:]
    iteration = _check_preempted_together(out, err)
    # and the run resumes from it to the end
    shutil.rmtree(out / "out")
    _spawn(out, "--resume", "--options", '{"num_epochs": 6}')
    assert [r["iteration"] for r in _records(out)] == [120, 120]
    assert iteration < 120


def test_second_two_process_job_into_a_running_jobs_dir_fails_at_once(tmp_path):
    # Issue 12: two gloo jobs in one output_dir mixed their files. The second job's
    # rank 0 finds the first job's lock and every rank of it raises, naming the holder.
    out = tmp_path / "run"
    # slow enough to be still training when the second job (a minute to start on a
    # loaded machine) reaches train()
    first = _start(out, "--options", '{"num_epochs": 20}', "--slow", "0.25")
    _wait_started(first, out)
    holder = int((out / "out" / "started").read_text())  # rank 0 of the first job
    second = _run([sys.executable, str(JOB), str(out), "--nproc", "2"])
    assert second.returncode != 0
    assert f"is in use by another run (PID {holder}" in second.stderr, second.stderr[-3000:]
    os.killpg(first.pid, signal.SIGTERM)
    code, err = _finish(first)
    assert code == 143, err[-3000:]
    _check_preempted_together(out, err, total=400)  # the first job's files are its own
