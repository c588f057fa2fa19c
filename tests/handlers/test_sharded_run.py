"""A trainer's checkpoint handler writing sharded folders (ignitrain.handlers.sharded_run).

On one process with ``attach_checkpoints(sharded=True)`` (what ``parallel="fsdp"``
selects): the folders, Ignite's eviction across runs, the one "latest" rule for files
and folders, and loading back. The 2-process trainer runs are in
tests/integration/test_fsdp_resume.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Engine
from torch import nn

import ignitrain
from ignitrain.handlers.checkpoint import (
    CheckpointError,
    CheckpointStore,
    RNGState,
    attach_checkpoints,
    build_payload,
)
from ignitrain.handlers.sharded import ShardedSaver, is_sharded_checkpoint, save_sharded
from ignitrain.handlers.sharded_run import (
    META,
    latest_checkpoint,
    latest_sharded,
    load_trainer_sharded,
    sharded_files,
    trainer_to_save,
    uses_fsdp,
)


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    data = [(torch.randn(3, 4), torch.randn(3, 2)) for _ in range(5)]

    def step(engine, batch):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(batch[0]), batch[1])
        loss.backward()
        opt.step()
        return loss.item()

    engine = Engine(step)
    objects = {"model": model, "optimizer": opt, "trainer": engine, "rng": RNGState()}
    return model, opt, engine, objects, data


def _run(tmp_path, epochs, *, resume=False):
    model, opt, engine, objects, data = _setup()
    store = CheckpointStore(tmp_path, n_saved=2)
    if resume:
        load_trainer_sharded(latest_sharded(tmp_path), objects)
    handler = attach_checkpoints(
        engine,
        objects,
        store,
        save_every=2,
        extra_fn=lambda: {"config": {"lr": 0.1}},
        sharded=True,
    )
    engine.run(data, max_epochs=epochs)
    return model, opt, engine, handler


def test_sharded_handler_writes_folders_and_points_at_the_last(tmp_path):
    killed = tmp_path / ".checkpoint_periodic_iter00000004.tmp"  # a save killed half way
    killed.mkdir(parents=True)
    (killed / "__0_0.distcp").write_bytes(b"partial")
    model, _, engine, handler = _run(tmp_path, 2)
    assert not killed.exists()
    names = sorted(p.name for p in tmp_path.iterdir())
    # 10 iterations, every 2 steps, n_saved=2 (Ignite's choice, evicted after the write)
    assert names == [
        "checkpoint_last_iter00000010",
        "checkpoint_periodic_iter00000008",
        "checkpoint_periodic_iter00000010",
        "sharded_latest.json",
    ]
    assert handler.last_path == tmp_path / "checkpoint_last_iter00000010"
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_last_iter00000010"
    fresh = nn.Linear(4, 2)
    payload = ignitrain.load_checkpoint(tmp_path, model=fresh)
    assert payload["iteration"] == 10 and payload["config"] == {"lr": 0.1}
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    # extra.pt opens with weights_only=True, and holds the metadata
    extra = torch.load(tmp_path / "checkpoint_last_iter00000010" / "extra.pt", weights_only=True)
    assert extra[META]["epoch"] == 2 and "trainer" in extra and "rng" in extra


def test_a_resumed_handler_knows_the_folders_and_continues_exactly(tmp_path):
    want_model, want_opt, _, _ = _run(tmp_path / "straight", 3)
    _run(tmp_path / "split", 2)
    model, opt, engine, _ = _run(tmp_path / "split", 3, resume=True)
    assert engine.state.iteration == 15
    for k, v in want_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    # Ignite was told the folders of the first run: n_saved=2 holds across runs
    periodic = [
        n for n, kind in sharded_files(tmp_path / "split", "checkpoint") if kind == "periodic"
    ]
    assert periodic == [
        "checkpoint_periodic_iter00000012.pt",
        "checkpoint_periodic_iter00000014.pt",
    ]  # 8 and 10 of the first run evicted


def test_latest_checkpoint_is_the_newest_of_files_and_folders(tmp_path):
    model = nn.Linear(4, 2)
    store = CheckpointStore(tmp_path)
    file = store.write(
        build_payload({"model": model}, {"iteration": 5}),
        "checkpoint_periodic_iter00000005.pt",
        "periodic",
    )
    folder = save_sharded(
        {"model": model}, tmp_path / "checkpoint_periodic_iter00000009", meta={"iteration": 9}
    )
    assert latest_checkpoint(tmp_path) == folder
    later = store.write(
        build_payload({"model": model}, {"iteration": 12}),
        "checkpoint_periodic_iter00000012.pt",
        "periodic",
    )
    assert latest_checkpoint(tmp_path) == later != file
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_a_best_folder_between_save_points_is_no_resume_point(tmp_path):
    model = nn.Linear(4, 2)
    saver = ShardedSaver(
        tmp_path, sharded=["model"], meta_fn=lambda: {"iteration": 3}, resumable_fn=lambda: False
    )
    saver({"model": model.state_dict()}, "checkpoint_best_x=1_iter00000003.pt")
    assert is_sharded_checkpoint(tmp_path / "checkpoint_best_x=1_iter00000003")
    assert not (tmp_path / "sharded_latest.json").exists()
    assert latest_sharded(tmp_path) is None


def test_argument_validation(tmp_path):
    model, _, engine, objects, _ = _setup()
    with pytest.raises(ValueError, match="sharded=True is not allowed with a background store"):
        attach_checkpoints(
            engine, objects, CheckpointStore(tmp_path, background=True), sharded=True
        )
    with pytest.raises(ValueError, match="'ignitrain_meta' is reserved"):
        trainer_to_save({**objects, META: RNGState()}, lambda n, o: o, dict)
    with pytest.raises(TypeError, match="resumable_fn must be callable"):
        ShardedSaver(tmp_path, sharded=["model"], resumable_fn=3)
    handler = attach_checkpoints(engine, objects, CheckpointStore(tmp_path), sharded=True)
    with pytest.raises(ValueError, match="tag='manual' is not allowed under FSDP"):
        handler.save_now("periodic", "manual")
    assert not uses_fsdp({"model": model})


def test_load_trainer_sharded_refuses_a_folder_without_the_objects(tmp_path):
    model = nn.Linear(4, 2)
    folder = save_sharded({"model": model}, tmp_path / "ck", meta={"iteration": 1})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match=r"has no \['optimizer'\]"):
        load_trainer_sharded(folder, {"model": model, "optimizer": opt})
    json.loads((folder / "ignitrain_sharded.json").read_text())  # untouched


def test_a_sharded_save_replaces_a_single_file_of_the_same_name(tmp_path):
    # Trainer.save_checkpoint(path) on one process writes a file, under FSDP a folder;
    # the replaced file (kept as .NAME.old until the folder is in place) must not
    # block the next replacement
    model = nn.Linear(4, 2)
    path = tmp_path / "checkpoint"
    torch.save(build_payload({"model": model}), path)
    save_sharded({"model": model}, path, meta={"iteration": 1})
    save_sharded({"model": model}, path, meta={"iteration": 2})
    assert is_sharded_checkpoint(path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
