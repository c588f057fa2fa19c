"""Sharded (DCP) checkpoints: save/load, resharding, consolidation, export, safe loading.

Multi-process tests spawn 2 real gloo processes with ``ignitrain.launch``; their
workers live in tests/_fsdp_workers.py.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ignitrain.cli import main as cli_main
from ignitrain.distributed import launch
from ignitrain.handlers.checkpoint import CheckpointError
from ignitrain.handlers.sharded import (
    SHARDED_MARKER,
    consolidated_state_dict,
    find_sharded,
    is_sharded_checkpoint,
    load_sharded,
    read_sharded_meta,
    save_sharded,
)

sys.path.insert(0, str(Path(__file__).parents[1]))
import _fsdp_workers as workers  # noqa: E402

TOTAL, AT = 6, 3


def _trained(seed=0):
    model = workers.make_model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    for s in range(2):
        x, y = workers.global_batch(s)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return model, opt


# -- one process, no process group --------------------------------------------------------


def test_save_and_load_on_one_process(tmp_path):
    model, opt = _trained()
    counter = workers.Counter()
    counter.steps = 7
    folder = save_sharded(
        {"model": model, "optimizer": opt, "counter": counter},
        tmp_path / "ck" / "iter00000002",
        meta={"iteration": 2},
    )
    assert is_sharded_checkpoint(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [".metadata", "__0_0.distcp", "extra.pt", SHARDED_MARKER]
    )
    assert not any(p.name.startswith(".iter") for p in folder.parent.iterdir())  # no temp left
    doc = read_sharded_meta(folder)
    assert (doc["world_size"], doc["sharded"], doc["extra"]) == (
        1,
        ["model", "optimizer"],
        ["counter"],
    )
    assert torch.load(folder / "extra.pt", weights_only=True) == {"counter": {"steps": 7}}

    fresh, fresh_opt = _trained(seed=5)
    fresh_counter = workers.Counter()
    meta = load_sharded(folder, {"model": fresh, "optimizer": fresh_opt, "counter": fresh_counter})
    assert meta["meta"] == {"iteration": 2}
    assert fresh_counter.steps == 7
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for pa, pb in zip(model.parameters(), fresh.parameters(), strict=True):
        sa, sb = opt.state[pa], fresh_opt.state[pb]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["step"], sb["step"])


def test_saving_again_replaces_the_folder_atomically(tmp_path):
    model, opt = _trained()
    folder = tmp_path / "latest"
    save_sharded({"model": model}, folder, meta={"iteration": 1})
    (tmp_path / ".latest.tmp").mkdir()  # a save killed half way leaves its temp folder
    save_sharded({"model": model, "optimizer": opt}, folder, meta={"iteration": 2})
    assert read_sharded_meta(folder)["meta"] == {"iteration": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


def test_argument_validation(tmp_path):
    model, opt = _trained()
    with pytest.raises(TypeError, match=r"state must be a non-empty mapping"):
        save_sharded({}, tmp_path / "a")
    with pytest.raises(ValueError, match=r"state key 'a.b' is not allowed"):
        save_sharded({"a.b": model}, tmp_path / "a")
    with pytest.raises(ValueError, match=r"optimizer whose parameters belong to none"):
        save_sharded({"optimizer": opt}, tmp_path / "a")
    with pytest.raises(TypeError, match=r"not JSON serializable"):
        save_sharded({"model": model}, tmp_path / "a", meta={"x": object()})
    with pytest.raises(CheckpointError, match=r"is not a complete ignitrain sharded checkpoint"):
        load_sharded(tmp_path / "missing", {"model": model})
    save_sharded({"model": model}, tmp_path / "ok")
    with pytest.raises(CheckpointError, match=r"has no \['optimizer'\]; it holds \['model'\]"):
        load_sharded(tmp_path / "ok", {"model": model, "optimizer": opt})
    with pytest.raises(CheckpointError, match=r"has no model 'generator'"):
        consolidated_state_dict(tmp_path / "ok", "generator")
    with pytest.raises(CheckpointError, match=r"neither a sharded checkpoint folder"):
        find_sharded(tmp_path / "ok" / "...")
    # a model of another shape: DCP's error, named as a CheckpointError
    with pytest.raises(CheckpointError, match=r"does not load into the given objects"):
        load_sharded(tmp_path / "ok", {"model": nn.Sequential(nn.Linear(6, 2))})


def test_find_sharded_picks_the_newest_in_a_run_dir(tmp_path):
    model, _ = _trained()
    for it in (10, 30, 20):
        save_sharded({"model": model}, tmp_path / "checkpoints" / f"it{it}", meta={"iteration": it})
    (tmp_path / "checkpoints" / ".it40.tmp").mkdir()  # incomplete: never chosen
    assert find_sharded(tmp_path) == tmp_path / "checkpoints" / "it30"
    assert find_sharded(tmp_path / "checkpoints" / "it10") == tmp_path / "checkpoints" / "it10"


def test_consolidated_state_dict_and_export_cli(tmp_path, capsys):
    model, opt = _trained()
    save_sharded({"model": model, "optimizer": opt}, tmp_path / "run" / "checkpoints" / "it2")
    weights = consolidated_state_dict(tmp_path / "run" / "checkpoints" / "it2")
    assert weights.keys() == model.state_dict().keys()
    out = tmp_path / "export" / "model.pt"
    assert cli_main(["export", str(tmp_path / "run"), str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    loaded = torch.load(out, weights_only=True)
    plain = workers.make_model(seed=9)
    plain.load_state_dict(loaded)
    for a, b in zip(model.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert cli_main(["export", str(tmp_path / "nothing"), str(out)]) == 2


# -- two real processes ----------------------------------------------------------------------


def _run(tmp_path, phase, nproc):
    if nproc == 1:
        workers.plain_resume(str(tmp_path), phase, TOTAL, AT)
    else:
        launch(
            workers.resume_worker,
            str(tmp_path),
            phase,
            TOTAL,
            AT,
            backend="gloo",
            nproc_per_node=nproc,
        )


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_fsdp_save_kill_load_resumes_bit_for_bit_and_reshards(tmp_path):
    # 2 processes: train 3 steps, save, train on to 6 (the uninterrupted run); the
    # processes end (everything in memory is gone). Fresh processes load and continue.
    _run(tmp_path, "straight", 2)
    _run(tmp_path, "resume:ck_ws2", 2)
    straight = torch.load(tmp_path / "straight_ws2.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed_from_ck_ws2_ws2.pt", weights_only=True)
    assert _equal(resumed["loaded"], torch.load(tmp_path / "saved_ws2.pt", weights_only=True))
    assert _equal(
        resumed["loaded_opt"], torch.load(tmp_path / "saved_opt_ws2.pt", weights_only=True)
    )
    assert _equal(resumed["final"], straight)  # bit for bit
    assert resumed["counter"] == TOTAL and resumed["meta"] == {"iteration": AT}
    assert resumed["warnings"] == []

    # the 2-process checkpoint on 1 process, no process group: same state, a warning
    _run(tmp_path, "resume:ck_ws2", 1)
    one = torch.load(tmp_path / "resumed_from_ck_ws2_ws1.pt", weights_only=True)
    assert _equal(one["loaded"], resumed["loaded"])
    assert _equal(one["loaded_opt"], resumed["loaded_opt"])
    assert any("written by 2 process(es) and is loaded by 1" in w for w in one["warnings"])
    for k in straight:  # same data, one process: equal up to the reduction order
        torch.testing.assert_close(one["final"][k], straight[k], rtol=1e-4, atol=1e-6)
    # ...and into a plain model for inference
    plain = workers.make_model(seed=9)
    plain.load_state_dict(consolidated_state_dict(tmp_path / "ck_ws2"))
    assert _equal({k: v.detach() for k, v in plain.state_dict().items()}, resumed["loaded"])

    # the reverse: a 1-process checkpoint resumes on 2 processes
    _run(tmp_path, "straight", 1)
    _run(tmp_path, "resume:ck_ws1", 2)
    two = torch.load(tmp_path / "resumed_from_ck_ws1_ws2.pt", weights_only=True)
    assert _equal(two["loaded"], torch.load(tmp_path / "saved_ws1.pt", weights_only=True))
    assert _equal(two["loaded_opt"], torch.load(tmp_path / "saved_opt_ws1.pt", weights_only=True))
    assert any("written by 1 process(es) and is loaded by 2" in w for w in two["warnings"])
    straight1 = torch.load(tmp_path / "straight_ws1.pt", weights_only=True)
    for k in straight1:
        torch.testing.assert_close(two["final"][k], straight1[k], rtol=1e-4, atol=1e-6)


def test_sharded_saver_with_ignite_checkpoint_on_one_process(tmp_path):
    from ignite.engine import Engine, Events
    from ignite.handlers import Checkpoint

    from ignitrain.handlers.sharded import ShardedSaver, checkpointables, load_sharded_objects

    model, opt = _trained()
    engine = Engine(lambda e, b: None)
    to_save = checkpointables({"model": model, "optimizer": opt, "trainer": engine})
    saver = ShardedSaver(tmp_path / "ck", sharded=["model", "optimizer"])
    checkpoint = Checkpoint(to_save, saver, n_saved=2)
    engine.add_event_handler(Events.EPOCH_COMPLETED, checkpoint)
    engine.run([0, 1], max_epochs=3)
    # Ignite evicts through saver.remove: 2 folders left, each complete
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "checkpoint_4",
        "checkpoint_6",
        "sharded_latest.json",
    ]
    last = saver.folder_of(checkpoint.last_checkpoint)
    assert last == tmp_path / "ck" / "checkpoint_6" and is_sharded_checkpoint(last)
    assert find_sharded(tmp_path / "ck") == last  # through the pointer
    assert read_sharded_meta(last)["meta"]["priority"] == 6

    fresh, fresh_opt = _trained(seed=3)
    fresh_engine = Engine(lambda e, b: None)
    to_load = checkpointables({"model": fresh, "optimizer": fresh_opt, "trainer": fresh_engine})
    load_sharded_objects(last, to_load)
    assert fresh_engine.state.epoch == 3 and fresh_engine.state.iteration == 6
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_sharded_saver_fsyncs_what_the_checkpoint_points_into_before_each_folder(
    tmp_path, monkeypatch
):
    # as CheckpointStore.depends_on: the History journal is durable before a folder
    # holding an offset into it exists (a power loss never leaves it pointing past it)
    import os

    from ignite.engine import Engine, Events
    from ignite.handlers import Checkpoint

    from ignitrain.handlers.sharded import ShardedSaver, checkpointables

    model, _ = _trained()
    journal = tmp_path / "history.jsonl"
    journal.write_text('["train/loss", 1, 0.5]\n')
    engine = Engine(lambda e, b: None)
    saver = ShardedSaver(tmp_path / "ck", sharded=["model"], depends_on=[journal])
    engine.add_event_handler(
        Events.EPOCH_COMPLETED,
        Checkpoint(checkpointables({"model": model, "trainer": engine}), saver),
    )
    seen, real_fsync = [], os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}") == str(journal):
            seen.append(sorted(p.name for p in (tmp_path / "ck").glob("checkpoint_*")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    engine.run([0], max_epochs=2)
    monkeypatch.undo()
    assert seen == [[], ["checkpoint_1"]]  # before folder 1, then before folder 2


def test_sharded_saver_evicts_only_after_a_complete_write(tmp_path):
    # Ignite's Checkpoint calls remove() before the new write; with n_saved=1 a failed
    # write must still leave the previous checkpoint, and "latest" must name it.
    from ignite.engine import Engine, Events
    from ignite.handlers import Checkpoint

    from ignitrain.handlers.sharded import ShardedSaver, checkpointables

    model, _ = _trained()

    class Flaky:
        fail = False

        def state_dict(self):
            if self.fail:
                return {"bad": lambda: 0}  # torch.save cannot pickle it: the write fails
            return {"ok": 1}

    flaky = Flaky()
    engine = Engine(lambda e, b: None)
    saver = ShardedSaver(tmp_path / "ck", sharded=["model"])
    checkpoint = Checkpoint(checkpointables({"model": model, "flaky": flaky}), saver, n_saved=1)
    engine.add_event_handler(Events.EPOCH_COMPLETED, checkpoint)
    engine.run([0], max_epochs=1)

    @engine.on(Events.EPOCH_STARTED)
    def break_it(engine):
        flaky.fail = engine.state.epoch == 2

    with pytest.raises(Exception, match=r"lambda"):
        engine.run([0], max_epochs=2)
    names = sorted(p.name for p in (tmp_path / "ck").iterdir() if not p.name.startswith("."))
    assert names == ["checkpoint_1", "sharded_latest.json"]
    assert find_sharded(tmp_path / "ck") == tmp_path / "ck" / "checkpoint_1"
    assert read_sharded_meta(tmp_path / "ck" / "checkpoint_1")["extra"] == ["flaky"]


def test_sharded_saver_argument_validation(tmp_path):
    from ignitrain.handlers.sharded import ModelState, OptimizerState, ShardedSaver, write_sharded

    with pytest.raises(TypeError, match=r"sharded must be a list of entry names"):
        ShardedSaver(tmp_path, sharded="model")
    with pytest.raises(TypeError, match=r"meta_fn must be callable"):
        ShardedSaver(tmp_path, sharded=["model"], meta_fn=3)
    with pytest.raises(ValueError, match=r"sharded names \['model'\] are not in the checkpoint"):
        write_sharded({"trainer": {}}, tmp_path / "x", sharded=["model"])
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module"):
        ModelState("net")
    with pytest.raises(TypeError, match=r"optimizer must be a torch.optim.Optimizer"):
        OptimizerState(nn.Linear(1, 1), "adam")
    assert (
        ShardedSaver(tmp_path, sharded=[]).folder_of("best_0.5000.pt") == tmp_path / "best_0.5000"
    )


@pytest.mark.slow
def test_ignite_checkpoint_resume_under_fsdp_is_bit_for_bit(tmp_path):
    # the uninterrupted run (3 epochs, a sharded checkpoint per epoch, 2 kept) ...
    launch(workers.ignite_checkpoint_worker, str(tmp_path), None, backend="gloo", nproc_per_node=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "checkpoint_12",
        "checkpoint_8",
        "sharded_latest.json",
    ]
    assert find_sharded(tmp_path) == tmp_path / "checkpoints" / "checkpoint_12"
    # ... and fresh processes resuming from the epoch-2 folder, running to epoch 3
    resumed_dir = tmp_path / "resumed" / "checkpoints"
    resumed_dir.mkdir(parents=True)
    shutil.copytree(tmp_path / "checkpoints" / "checkpoint_8", resumed_dir / "checkpoint_8")
    launch(
        workers.ignite_checkpoint_worker,
        str(tmp_path / "resumed"),
        "checkpoint_8",
        backend="gloo",
        nproc_per_node=2,
    )
    straight = torch.load(tmp_path / "ignite_straight.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "ignite_resumed.pt", weights_only=True)
    assert _equal(straight, resumed)
