"""The checkpoint package's parts: options, reading a directory, linking, import order.

Real files, real Ignite engines; ``os.fsync`` is held (not our code) to show that a
linked best file is queued behind a commit that is still running, not waited for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from ignitrain.handlers.checkpoint import (
    CheckpointDir,
    CheckpointOptions,
    CheckpointStore,
    attach_checkpoints,
    build_payload,
    safe_load,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def payload_of(model: nn.Module, iteration: int) -> dict:
    return build_payload({"model": model}, {"iteration": iteration, "epoch": 1})


def test_checkpoint_options_are_checked_naming_the_field():
    with pytest.raises(ValueError, match=r"save_every=-2 is not allowed: expected N > 0"):
        CheckpointOptions(save_every=-2)
    with pytest.raises(ValueError, match=r"best_mode='up' is not allowed: expected 'min', 'max'"):
        CheckpointOptions(best_mode="up")
    with pytest.raises(ValueError, match=r"accumulation_steps=True is not allowed"):
        CheckpointOptions(accumulation_steps=True)
    with pytest.raises(TypeError, match=r"best_metric=3 is not allowed: expected a str"):
        CheckpointOptions(best_metric=3)
    assert CheckpointOptions(save_every=5, accumulation_steps=2).save_every == 5


def test_a_checkpoint_directory_is_read_without_a_store_and_without_writing(tmp_path):
    model = nn.Linear(3, 2)
    store = CheckpointStore(tmp_path / "ck", n_saved=None)
    first = store.write(payload_of(model, 1), "checkpoint_periodic_iter00000001.pt", "periodic")
    second = store.write(payload_of(model, 2), "checkpoint_last_iter00000002.pt", "last")
    reader = CheckpointDir(tmp_path / "ck")
    assert reader.latest_path() == second
    assert set(reader.checkpoints()) == {first, second}
    assert reader.checkpoints("periodic") == [first]
    missing = CheckpointDir(tmp_path / "none")
    assert missing.latest_path() is None and missing.checkpoints() == []
    assert not (tmp_path / "none").exists()


class Counted:
    """A checkpointed object that counts how often its state is taken."""

    def __init__(self):
        self.calls = 0

    def state_dict(self):
        self.calls += 1
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def test_a_best_file_of_the_periodic_moment_takes_no_state_and_keeps_the_pointer(tmp_path):
    # issue 16: one payload for best and periodic at the same iteration. Before, Ignite's
    # Checkpoint took every object's state for the best file too, then threw it away.
    model = nn.Linear(4, 2)
    trainer = Engine(lambda e, b: None)
    evaluator = Engine(lambda e, b: None)
    losses = iter([0.5, 0.4, 0.3])

    @evaluator.on(Events.COMPLETED)
    def publish(engine):
        engine.state.metrics["val_loss"] = next(losses)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run([0]))
    counted = Counted()
    store = CheckpointStore(tmp_path, n_saved=1, background=True)
    attach_checkpoints(
        trainer,
        {"model": model, "counted": counted},
        store,
        evaluator=evaluator,
        best_metric="val_loss",
        save_last=False,
    )
    trainer.run([0, 1], max_epochs=3)
    store.wait()
    assert counted.calls == 3  # one per epoch: the three best files are links
    best = tmp_path / "checkpoint_best_val_loss=0.3_iter00000006.pt"
    periodic = tmp_path / "checkpoint_periodic_epoch0003.pt"
    assert best.stat().st_ino == periodic.stat().st_ino
    assert json.loads(store.pointer_path.read_text())["file"] == periodic.name
    assert safe_load(best)["counted"] == {"calls": 3}


def test_a_save_point_fsyncs_its_directory_once_and_evicts_only_after_that(tmp_path, monkeypatch):
    # issue 16: the periodic file's rename, the best file linked to it and the pointer
    # share one directory fsync (three before); the evicted files go after it, so a
    # power loss never takes the old files before the new ones are durable
    import stat

    model = nn.Linear(4, 2)
    trainer = Engine(lambda e, b: None)
    evaluator = Engine(lambda e, b: None)
    losses = iter([0.5, 0.4])

    @evaluator.on(Events.COMPLETED)
    def publish(engine):
        engine.state.metrics["val_loss"] = next(losses)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run([0]))
    store = CheckpointStore(tmp_path, n_saved=1, background=True)
    attach_checkpoints(trainer, {"model": model}, store, evaluator=evaluator,
                       best_metric="val_loss", save_last=False)  # fmt: skip
    trainer.run([0, 1], max_epochs=1)
    store.wait()
    log, real_fsync, real_unlink = [], os.fsync, os.unlink

    def fsync(fd):  # this run's files only (another test's thread may still be closing)
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path)):
            log.append("dir fsync" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file fsync")
        real_fsync(fd)

    def unlink(path, *args, **kwargs):
        if str(path).endswith(".pt") and str(path).startswith(str(tmp_path)):
            log.append(f"unlink {os.path.basename(path)}")
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "unlink", unlink)
    trainer.run([0, 1], max_epochs=2)  # epoch 2: a new periodic and a new best file
    store.wait()
    monkeypatch.undo()
    assert log == [
        "file fsync",  # the periodic file's data (the best file is a link to it)
        "dir fsync",
        "unlink checkpoint_periodic_epoch0001.pt",
        "unlink checkpoint_best_val_loss=0.5_iter00000002.pt",
    ]
    names = {p.name for p in tmp_path.glob("*.pt")}
    assert names == {
        "checkpoint_periodic_epoch0002.pt",
        "checkpoint_best_val_loss=0.4_iter00000004.pt",
    }
    assert json.loads(store.pointer_path.read_text())["file"] == "checkpoint_periodic_epoch0002.pt"


def test_writes_made_together_commit_when_the_block_ends_even_when_it_raises(tmp_path):
    # a save point's periodic file is committed with the best file linked to it (one
    # directory fsync), and still when deciding the best one fails
    store = CheckpointStore(tmp_path, n_saved=None)  # inline: the commit runs at the end
    model = nn.Linear(2, 2)
    name = "checkpoint_periodic_iter00000001.pt"
    with pytest.raises(RuntimeError, match="best decision"), store.together():
        path = store.write(payload_of(model, 1), name, "periodic")
        assert not path.exists()  # queued until the block ends
        raise RuntimeError("the best decision failed")
    assert safe_load(path)["iteration"] == 1
    assert json.loads(store.pointer_path.read_text())["file"] == name


@pytest.mark.parametrize("changed_after_the_epoch", [False, True])
def test_the_last_file_links_to_the_periodic_one_of_its_moment_unless_the_weights_changed(
    tmp_path, changed_after_the_epoch
):
    # issue 16: the run's end is the last epoch's periodic moment: the last file takes no
    # second state (teardown waits for no second serialisation and fsync). A handler
    # that changed the weights after the epoch's save point gets a file of its own.
    model = nn.Linear(4, 2)
    trainer = Engine(lambda e, b: None)
    if changed_after_the_epoch:

        @trainer.on(Events.COMPLETED)
        def nudge(_):
            with torch.no_grad():
                model.bias.add_(1.0)

    counted = Counted()
    store = CheckpointStore(tmp_path, n_saved=1, background=True)
    attach_checkpoints(trainer, {"model": model, "counted": counted}, store, save_last=True)
    trainer.run([0, 1], max_epochs=2)
    store.wait()
    last = tmp_path / "checkpoint_last_iter00000004.pt"
    periodic = tmp_path / "checkpoint_periodic_epoch0002.pt"
    assert (last.stat().st_ino == periodic.stat().st_ino) is not changed_after_the_epoch
    assert counted.calls == 2 + changed_after_the_epoch
    assert json.loads(store.pointer_path.read_text())["file"] == last.name
    assert torch.equal(safe_load(last)["model"]["bias"], model.bias.detach())


def test_a_link_is_queued_behind_a_running_commit_without_waiting(tmp_path, monkeypatch):
    model = nn.Linear(4, 2)
    store = CheckpointStore(tmp_path, n_saved=None, background=True)
    release, real_fsync = threading.Event(), os.fsync

    def held_fsync(fd):
        assert release.wait(30), "never released"
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", held_fsync)  # the disk is slow: the commit hangs
    periodic = store.write(payload_of(model, 4), "checkpoint_periodic_iter00000004.pt", "periodic")
    linker = threading.Thread(
        target=store.link, args=(periodic, "checkpoint_best_x=1_iter00000004.pt", "best")
    )
    linker.start()
    linker.join(10)
    assert not linker.is_alive(), "link() waited for the periodic commit"
    release.set()
    store.wait()
    monkeypatch.undo()
    best = tmp_path / "checkpoint_best_x=1_iter00000004.pt"
    assert best.stat().st_ino == periodic.stat().st_ino
    assert safe_load(best)["iteration"] == 4
    assert json.loads(store.pointer_path.read_text())["file"] == periodic.name


def test_a_background_file_holds_the_state_of_its_save_whatever_training_does_next(
    tmp_path, monkeypatch
):
    # issue 16: the training thread only serialises the state; the writer thread writes
    # it, here held at the temp file's open until the weights have changed
    import builtins

    model = nn.Linear(4, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    store = CheckpointStore(tmp_path, n_saved=None, background=True)
    release, real_open = threading.Event(), builtins.open

    def held_open(file, mode="r", *args, **kwargs):
        if str(file).endswith(".tmp") and "w" in mode:
            assert release.wait(30), "never released"
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", held_open)
    path = store.write(payload_of(model, 1), "checkpoint_periodic_iter00000001.pt", "periodic")
    with torch.no_grad():  # the next optimizer steps, while the writer waits
        model.weight.add_(1.0)
        model.bias.zero_()
    release.set()
    store.wait()
    monkeypatch.undo()
    saved = safe_load(path)["model"]
    assert all(torch.equal(saved[k], before[k]) for k in before)
    assert not torch.equal(saved["weight"], model.weight.detach())


def test_numpy_scalars_in_long_lists_become_python_numbers_and_plain_lists_are_kept():
    class Series:
        def __init__(self, values):
            self.values = values

        def state_dict(self):
            return {"values": self.values}

    plain = [0.5] * 1000
    mixed = [0.5] * 999 + [np.float32(2.0)]
    payload = build_payload({"a": Series(plain), "b": Series(mixed)})
    assert payload["a"]["values"] is plain  # checked in one pass, not copied
    assert type(payload["b"]["values"][-1]) is float and payload["b"]["values"][-1] == 2.0


@pytest.mark.parametrize(
    "module",
    ["ignitrain.handlers.sharded_run", "ignitrain.handlers.sharded", "ignitrain.checkpoint_choice"],
)
def test_each_checkpoint_module_imports_first_without_a_cycle(module):
    # adapter, restore and sharded_run imported each other inside functions before
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
