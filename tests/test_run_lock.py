"""Tests for ignitrain/run_lock.py: one run per output directory (issue 12 item 2).

Real trainers, real files, a real second process holding the lock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ignite.engine import Events

import ignitrain
from ignitrain import TrainConfig
from ignitrain.config import ConfigError
from ignitrain.run_lock import LOCK_NAME, OutputDirLockedError, RunLock, existing_run
from tests.conftest import make_mlp

_HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from ignitrain.run_lock import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock on ``tmp_path / "run"``."""
    root = str(Path(__file__).resolve().parents[1])
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER.format(root=root), str(run)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    yield run, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _trainer(out: Path, digits, **options):
    train, val = digits.train, digits.val
    settings = dict(num_epochs=1, batch_size=128, progress_bar=False, tensorboard=False)
    config = TrainConfig(output_dir=str(out), **{**settings, **options})
    return ignitrain.create_classification_trainer(make_mlp(), config, train, val)


def test_second_run_into_a_locked_dir_fails_at_once_naming_the_holder(holder, digits_flat):
    run, proc = holder
    assert (run / LOCK_NAME).read_text().strip() == str(proc.pid)
    trainer = _trainer(run, digits_flat)
    start = time.monotonic()
    with pytest.raises(OutputDirLockedError, match=rf"in use by another run \(PID {proc.pid}"):
        trainer.train()
    assert time.monotonic() - start < 5, "refused at once, not after waiting"
    assert trainer.engine.state.iteration == 0
    assert existing_run(run) == [], "the refused run wrote nothing"


def test_stale_lock_of_a_sigkilled_run_does_not_block(holder, digits_flat):
    run, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / LOCK_NAME).read_text().strip() == str(proc.pid)  # the stale file stays
    history = _trainer(run, digits_flat).train()
    assert history.meta["stop_reason"] == "completed"


def test_lock_is_held_while_training_and_released_after_a_failure(tmp_path, digits_flat):
    out = tmp_path / "run"
    trainer = _trainer(out, digits_flat)
    seen = []

    @trainer.engine.on(Events.ITERATION_COMPLETED(once=2))
    def probe(_):
        with pytest.raises(OutputDirLockedError, match=f"PID {os.getpid()}"):
            RunLock(out).acquire()
        seen.append(True)
        raise RuntimeError("boom in training")

    with pytest.raises(RuntimeError, match="boom in training"):
        trainer.train()
    assert seen == [True]
    RunLock(out).acquire().release()  # released by the failed run


def test_new_run_into_a_used_dir_refuses_unless_overwrite_or_resume(tmp_path, digits_flat):
    out = tmp_path / "run"
    _trainer(out, digits_flat).train()
    assert existing_run(out) == ["history.json", "checkpoints/"]
    old = sorted((out / "checkpoints").iterdir())

    again = _trainer(out, digits_flat)
    with pytest.raises(ConfigError, match=r"already holds a run \(history.json, checkpoints/\)"):
        again.train()
    assert sorted((out / "checkpoints").iterdir()) == old, "nothing touched"

    # resume="latest": continues the run in place (here: one more epoch)
    resumed = _trainer(out, digits_flat, resume="latest", num_epochs=2)
    resumed.train()
    assert resumed.engine.state.epoch == 2

    # overwrite=True: the old run's files go first, the new run starts at epoch 0
    marker = out / "checkpoints" / "checkpoint_periodic_iter99999999.pt"
    marker.write_bytes(b"old")
    fresh = _trainer(out, digits_flat, overwrite=True)
    fresh.train()
    assert not marker.exists()
    assert fresh.history.latest("train/loss") is not None
    assert fresh.engine.state.epoch == 1


def test_the_same_trainer_trains_on_in_its_own_dir(tmp_path, digits_flat):
    out = tmp_path / "run"
    trainer = _trainer(out, digits_flat)
    trainer.train()
    trainer.config.num_epochs = 2  # not a new run: this trainer wrote the dir
    trainer.train()
    assert trainer.engine.state.epoch == 2


def test_no_output_dir_locks_nothing(digits_flat):
    train, val = digits_flat.train, digits_flat.val
    config = TrainConfig(num_epochs=1, batch_size=256, progress_bar=False)
    history = ignitrain.create_classification_trainer(make_mlp(), config, train, val).train()
    assert history.meta["stop_reason"] == "completed"


def test_run_lock_validates_arguments(tmp_path):
    with pytest.raises(TypeError, match="Argument output_dir=3 is not allowed: expected a path"):
        RunLock(3)
    with pytest.raises(TypeError, match="overwrite"):
        TrainConfig(overwrite="yes")
    lock = RunLock(tmp_path / "new" / "dir").acquire()
    assert lock.held and (tmp_path / "new" / "dir" / LOCK_NAME).is_file()
    assert lock.acquire() is lock  # re-acquiring a held lock is a no-op
    lock.release()
    lock.release()
    assert not lock.held


def test_a_killed_runs_journal_alone_counts_as_a_run_and_overwrite_removes_it(tmp_path):
    # a run killed before its end leaves history.jsonl (history.json is written at the end)
    from ignitrain.run_lock import existing_run, remove_run

    (tmp_path / "history.jsonl").write_text('{"name": "train/loss"}\n')
    (tmp_path / "run.json").write_text("{}")
    assert existing_run(tmp_path) == ["history.jsonl"]
    remove_run(tmp_path)
    assert not (tmp_path / "history.jsonl").exists() and not (tmp_path / "run.json").exists()
    assert existing_run(tmp_path) == []
