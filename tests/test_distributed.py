"""Tests for ignitrain/distributed.py: launch modes and rank helpers, with real processes.

Multi-process tests spawn real gloo processes (``idist.Parallel``'s ``spawn`` start
method) or run real ``torchrun``; their workers live in ``tests/_dist_workers.py`` so
the spawned interpreters can import them by name.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import ignite.distributed as idist
import pytest
import torch
import torch.distributed as dist

from ignitrain import distributed
from ignitrain.distributed import launch

# Spawned children re-import workers by module name and inherit sys.path from this
# process; make sure the tests directory is on it whatever pytest's import mode.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

import _dist_workers as workers  # noqa: E402

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")


def _records(out_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out_dir.glob("rank*.json"))]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No torchrun variables inherited from the environment running the tests."""
    for name in (*_TORCHRUN_VARS, "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def torchrun_env_of_one(clean_env: pytest.MonkeyPatch):
    """The environment torchrun gives the only worker of a 1-process job.

    A group launch forms under torchrun lives until the process exits; this fixture
    destroys it after the test so the next test starts without one.
    """
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        clean_env.setenv(name, value)
    clean_env.setenv("LOCAL_WORLD_SIZE", "1")
    clean_env.setenv("MASTER_ADDR", "127.0.0.1")
    clean_env.setenv("MASTER_PORT", str(distributed.free_port()))
    yield
    if dist.is_initialized():
        idist.finalize()


# ---------------------------------------------------------------------------------------
# One process


def test_single_process_calls_fn_with_rank_zero_and_no_group(clean_env):
    calls = []

    def fn(local_rank, a, b, *, c):
        calls.append((local_rank, a, b, c, idist.get_world_size(), dist.is_initialized()))

    launch(fn, 1, "two", c=3.0)
    launch(fn, 1, "two", c=3.0, backend="gloo", nproc_per_node=1)
    assert calls == [(0, 1, "two", 3.0, 1, False)] * 2


def _group_timeout() -> datetime.timedelta:
    # Torch keeps the timeout on the backend's options (private API, fine for a test).
    backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
    return backend.options._timeout


def test_joins_torchrun_environment_with_its_timeout(torchrun_env_of_one):
    seen = []

    def fn(local_rank, tag):
        seen.append((tag, local_rank, idist.backend(), distributed.world_size(), _group_timeout()))

    launch(fn, "first", timeout=7.5)
    assert seen == [("first", 0, "gloo", 1, datetime.timedelta(seconds=7.5))]
    group = dist.distributed_c10d._get_default_group()
    # A second launch runs in the same group: torch cannot reliably re-form the
    # default group inside a torchrun worker.
    launch(fn, "second", timeout=99)
    assert seen[1] == ("second", 0, "gloo", 1, datetime.timedelta(seconds=7.5))
    assert dist.distributed_c10d._get_default_group() is group


def test_torchrun_group_survives_an_error_in_fn(torchrun_env_of_one):
    def fn(local_rank):
        raise KeyError("from fn")

    with pytest.raises(KeyError, match="from fn"):
        launch(fn, backend="gloo")
    seen = []
    launch(lambda local_rank: seen.append(distributed.world_size()))
    assert seen == [1]


def test_nproc_per_node_is_ignored_with_a_warning_under_torchrun(torchrun_env_of_one):
    seen = []
    with pytest.warns(UserWarning, match="nproc_per_node=2.* ignored under torchrun"):
        launch(lambda local_rank: seen.append(idist.get_world_size()), nproc_per_node=2)
    assert seen == [1]


def test_runs_inside_a_group_the_caller_made(clean_env):
    clean_env.setenv("LOCAL_RANK", "0")  # what a launcher would set; spares idist's guess
    port = distributed.free_port()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        seen = []
        launch(lambda local_rank: seen.append((local_rank, dist.is_initialized())))
        assert seen == [(0, True)]
        assert dist.is_initialized(), "launch must not destroy a group it did not make"
    finally:
        # idist adopted the caller's group; finalize destroys it and resets idist too.
        idist.finalize()
    assert not dist.is_initialized() and idist.get_world_size() == 1


def test_rank_helpers_on_a_single_process(clean_env):
    assert distributed.world_size() == 1
    assert distributed.is_rank_zero()
    distributed.barrier()
    assert distributed.agree_any(True) is True
    assert distributed.agree_any(False) is False
    assert distributed.agree_all(torch.tensor(1)) is True
    obj = {"a": [1, 2]}
    assert distributed.broadcast_object(obj) is obj
    assert distributed.all_gather_object(obj) == [obj]
    state = {"value": 1}
    assert distributed.with_rank_states(state) == {"value": 1}  # nothing to gather
    # a 2-process checkpoint resumed on one process: rank 0's state, without "ranks"
    assert distributed.own_rank_state({"value": 0, "ranks": [{"value": 0}, {"value": 9}]}) == {
        "value": 0
    }

    @distributed.rank_zero_only
    def double(x):
        """Doc kept."""
        return 2 * x

    assert double(21) == 42
    assert double.__doc__ == "Doc kept."


def test_free_port_gives_distinct_bindable_ports():
    ports = [distributed.free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"nproc_per_node": 0}, ValueError, "nproc_per_node must be >= 1, got 0"),
        ({"nproc_per_node": "2"}, TypeError, "nproc_per_node must be an int"),
        ({"nproc_per_node": True}, TypeError, "nproc_per_node must be an int"),
        ({"backend": "glo"}, ValueError, "backend='glo' is not available.*Did you mean 'gloo'"),
        ({"backend": 1}, TypeError, "backend must be one of"),
        ({"timeout": 0}, ValueError, "timeout must be > 0 seconds, got 0"),
        ({"timeout": float("nan")}, ValueError, "timeout must be > 0 seconds"),
        ({"timeout": "60"}, TypeError, "timeout must be seconds"),
        ({"master_port": 70000}, ValueError, "master_port must be in 1..65535, got 70000"),
        ({"master_port": 29500.0}, TypeError, "master_port must be an int"),
    ],
)
def test_launch_validates_arguments(clean_env, kwargs, error, match):
    calls = []
    with pytest.raises(error, match=match):
        launch(calls.append, **kwargs)
    assert calls == [], "nothing may run after a bad argument"


@pytest.mark.skipif(torch.cuda.is_available(), reason="nccl is valid where CUDA is")
def test_launch_rejects_nccl_without_cuda(clean_env):
    with pytest.raises(ValueError, match="backend='nccl'"):
        launch(print, backend="nccl", nproc_per_node=2)


def test_launch_rejects_non_callable_and_unpicklable_fn(clean_env):
    with pytest.raises(TypeError, match="fn must be callable"):
        launch("train")
    with pytest.raises(TypeError, match="cannot be sent to spawned processes"):
        launch(lambda local_rank: None, nproc_per_node=2, backend="gloo")


def test_helpers_validate_arguments(clean_env):
    with pytest.raises(TypeError, match="flag must be a bool"):
        distributed.agree_any("yes")
    with pytest.raises(TypeError, match="flag must be a bool"):
        distributed.agree_all(None)
    with pytest.raises(ValueError, match="flag must be one value"):
        distributed.agree_any(torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"src must be a rank in 0..0, got 1"):
        distributed.broadcast_object("x", src=1)
    with pytest.raises(TypeError, match="rank_zero_only needs a callable"):
        distributed.rank_zero_only(3)


# ---------------------------------------------------------------------------------------
# Real processes


def _check_collectives(records: list[dict], *, scale: float, timeout_s: float) -> None:
    assert [r["rank"] for r in records] == [0, 1]
    assert [r["local_rank"] for r in records] == [0, 1]
    for r in records:
        assert r["world_size"] == 2 and r["backend"] == "gloo"
        assert r["sum"] == pytest.approx(3 * scale)  # (0 + 1) + (1 + 1), scaled
        assert r["group_timeout_s"] == pytest.approx(timeout_s)
        assert r["any_rank_one"] is True and r["any_false"] is False
        assert r["all_rank_one"] is False and r["all_true"] is True
        assert r["broadcast_from"] == 1
        assert r["broadcast_nested"] == [1, 2.5, "x"]
        assert r["broadcast_tensor"] == [0, 1, 2]
        assert r["gathered"] == [[0, 3], [1, 43]]
        assert r["saved_ranks"] == [{"value": 0}, {"value": 10}]
        assert r["other_world_state"] == {"value": 0}  # saved by 3 processes: rank 0's
    assert [r["own_state"] for r in records] == [{"value": 0}, {"value": 10}]
    assert [r["is_rank_zero"] for r in records] == [True, False]
    assert [r["rank_zero_only"] for r in records] == ["ran", None]


@pytest.mark.slow
def test_two_spawned_jobs_at_once_run_collectives_on_their_own_ports(clean_env, tmp_path):
    # Two jobs of 2 gloo processes each, started together: with Ignite's fixed default
    # port (2222) the second rendezvous would collide with the first. Each rank of each
    # job runs real collectives and the rank helpers and writes its own record.
    errors: list[BaseException] = []
    jobs = [(tmp_path / "a", 1.0), (tmp_path / "b", 100.0)]

    def job(out_dir: Path, scale: float) -> None:
        out_dir.mkdir()
        try:
            launch(
                workers.collectives_worker, str(out_dir), nproc_per_node=2, timeout=40, scale=scale
            )
        except BaseException as err:  # re-raised by the assertion in the main thread
            errors.append(err)

    threads = [threading.Thread(target=job, args=j) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    assert not any(t.is_alive() for t in threads), "a launch hung"
    assert errors == []
    for out_dir, scale in jobs:
        _check_collectives(_records(out_dir), scale=scale, timeout_s=40)
    ports = [_records(out_dir)[0]["master_port"] for out_dir, _ in jobs]
    assert len(set(ports)) == 2 and "2222" not in ports


@pytest.mark.slow
def test_a_nan_loss_on_one_rank_stops_every_rank_at_that_step_without_a_hang(clean_env, tmp_path):
    # The NaN guard agrees over the group (all_reduce MIN): rank 0, whose loss is
    # finite, must skip the backward too, or DDP's all-reduce waits for rank 1 forever.
    # The world size is read at the first backward (issue 16), inside the group.
    launch(workers.nan_on_rank_one_worker, str(tmp_path), nproc_per_node=2, timeout=60)
    records = _records(tmp_path)
    assert [r["iteration"] for r in records] == [3, 3]
    assert [r["moved_at_3"] for r in records] == [False, False]
    assert all(r["stop_reason"] for r in records)


def _seconds_since_fault(out_dir: Path) -> float:
    return time.time() - float((out_dir / "fault_time").read_text())


@pytest.mark.slow
def test_failing_rank_ends_the_job_with_its_traceback(clean_env, tmp_path):
    with pytest.raises(Exception, match="deliberate failure on rank 1") as info:
        launch(
            workers.raise_on_rank_one, str(tmp_path), nproc_per_node=2, backend="gloo", timeout=60
        )
    # Rank 0 sat in a barrier that rank 1 never joined: the job ended because rank 1's
    # failure stopped it, well before the 60 s group timeout, not because of it.
    assert _seconds_since_fault(tmp_path) < 20
    message = str(info.value)
    assert "Traceback" in message and "raise_on_rank_one" in message


def _torchrun(script_args: list[str], port: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (*_TORCHRUN_VARS, "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"  # silences torchrun's warning; 2 cores anyway
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={port}",
        str(Path(workers.__file__)),
        *script_args,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90)


@pytest.mark.slow
def test_torchrun_script_joins_the_group_and_a_failing_rank_ends_it(tmp_path):
    port = distributed.free_port()
    proc = _torchrun([str(tmp_path), "join_then_fail"], port)
    # First launch: both ranks joined torchrun's group of 2 and ran real collectives.
    records = _records(tmp_path)
    _check_collectives(records, scale=10.0, timeout_s=45)
    assert {r["master_port"] for r in records} == {str(port)}
    # Second launch, in the same group: rank 1 raised; the run failed with its
    # traceback soon after (rank 0 was stopped, not left waiting for the 45 s timeout).
    assert proc.returncode != 0
    assert _seconds_since_fault(tmp_path) < 20
    assert "ValueError: deliberate failure on rank 1" in proc.stderr
    assert "raise_on_rank_one" in proc.stderr


# ---------------------------------------------------------------------------------------
# Spawned processes as fast as they can be, torn down cleanly (issue 13 item 2)


@pytest.mark.slow
def test_spawned_ranks_get_their_share_of_cores_the_config_timeout_and_logging(clean_env, tmp_path):
    import logging

    from ignitrain import TrainConfig
    from ignitrain.spawn import threads_per_process

    clean_env.delenv("OMP_NUM_THREADS", raising=False)
    log = logging.getLogger("ignitrain")
    handler = logging.StreamHandler(sys.stderr)
    log.addHandler(handler)
    try:
        # no timeout= given: the TrainConfig among fn's arguments sets it
        launch(workers.setup_worker, str(tmp_path), TrainConfig(dist_timeout=77), nproc_per_node=2)
    finally:
        log.removeHandler(handler)
    records = _records(tmp_path)
    assert [r["threads"] for r in records] == [threads_per_process(2)] * 2
    assert [r["group_timeout_s"] for r in records] == [77.0, 77.0]
    # the launcher's console handler was rebuilt in each rank: epoch lines print there
    assert all(r["console_handlers"] >= 1 for r in records)
    # an explicit timeout and thread count win, the config passed by keyword too
    launch(
        workers.setup_worker,
        str(tmp_path),
        nproc_per_node=2,
        timeout=33,
        threads_per_process=1,
        config=TrainConfig(dist_timeout=77),
    )
    records = _records(tmp_path)
    assert [(r["threads"], r["group_timeout_s"]) for r in records] == [(1, 33.0)] * 2


def test_launch_validates_threads_per_process(clean_env):
    with pytest.raises(ValueError, match="threads_per_process must be >= 1, got 0"):
        launch(print, nproc_per_node=2, threads_per_process=0)
    with pytest.raises(TypeError, match="threads_per_process must be an int >= 1 or None"):
        launch(print, nproc_per_node=2, threads_per_process="2")


@pytest.mark.slow
def test_bf16_on_two_spawned_processes_exits_cleanly_every_time(tmp_path):
    # Issue 13: bf16 + 2 processes aborted after training in 3 of 9 spawn runs
    # ("terminate called without an active exception", SIGABRT, exit 1). The preemption
    # handler, still the SIGTERM handler when fn returned, kept the trainer -- DDP, its
    # reducer and the gloo group -- alive until interpreter shutdown. Each run here must
    # exit 0 with rank 0's epoch lines, and nothing of the run may be alive at exit.
    env = {k: v for k, v in os.environ.items() if k not in (*_TORCHRUN_VARS, "MASTER_PORT")}
    env.pop("OMP_NUM_THREADS", None)
    for run in range(5):
        out = tmp_path / f"run{run}"
        out.mkdir()
        proc = subprocess.run(
            [sys.executable, str(Path(workers.__file__)), str(out), "spawn_bf16"],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, f"run {run}: {proc.returncode}\n{proc.stderr[-3000:]}"
        assert "terminate called" not in proc.stderr
        assert "launch returned" in proc.stdout
        # the epoch lines of rank 0, once (logging set up by the launching script)
        assert proc.stderr.count("Epoch 2/2") == 1, proc.stderr[-3000:]
        exits = [json.loads((out / f"exit{r}.json").read_text()) for r in (0, 1)]
        assert exits == [{"ddp_alive": 0, "group": False}] * 2
