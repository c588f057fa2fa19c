"""Data order: a function of (seed, epoch) only, and a mid-epoch resume continues it."""

import pytest
import torch
from ignite.engine import Engine
from torch.utils.data import TensorDataset

from ignitrain import TrainConfig
from ignitrain.data import (
    ResumableSampler,
    ShardSampler,
    attach_epoch_sync,
    make_eval_loader,
    make_train_loader,
)

DATA = TensorDataset(torch.arange(50).float().unsqueeze(1), torch.arange(50))


def _record(loader, config, *, state=None, max_epochs=3):
    seen = []
    engine = Engine(lambda e, batch: seen.append((e.state.iteration, batch[1].tolist())))
    attach_epoch_sync(engine, loader, config.seed)
    if state is not None:
        engine.load_state_dict(state)
    engine.run(loader, max_epochs=max_epochs)
    return seen


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("stop_at", [3, 7, 14])  # mid-epoch, epoch boundary, mid later epoch
def test_resume_continues_the_same_batches(num_workers, stop_at):
    config = TrainConfig(batch_size=8, seed=3, num_workers=num_workers)
    full = _record(make_train_loader(DATA, config), config)
    assert len(full) == 21  # 7 batches x 3 epochs
    epochs = [sorted(i for _, b in full[k * 7 : (k + 1) * 7] for i in b) for k in range(3)]
    assert all(e == list(range(50)) for e in epochs)  # every sample once per epoch
    assert full[0][1] != full[7][1]  # a new order each epoch
    state = {"iteration": stop_at, "epoch_length": 7, "max_epochs": 3}
    resumed = _record(make_train_loader(DATA, config), config, state=state)
    assert resumed == full[stop_at:]


def test_order_depends_on_seed_only():
    a = TrainConfig(batch_size=10, seed=1)
    b = TrainConfig(batch_size=10, seed=2)
    first = _record(make_train_loader(DATA, a), a, max_epochs=1)
    assert first == _record(make_train_loader(DATA, a), a, max_epochs=1)
    assert first != _record(make_train_loader(DATA, b), b, max_epochs=1)


def test_loaders_pass_through_and_skip():
    loader = [1, 2, 3]
    assert make_train_loader(loader, TrainConfig()) is loader
    sampler = ResumableSampler(DATA, shuffle=False, seed=0)
    sampler.skip(45)
    assert list(sampler) == [45, 46, 47, 48, 49]
    assert list(sampler) == list(range(50))  # the skip applies once


def test_eval_loader_sees_every_sample_once_in_order():
    loader = make_eval_loader(DATA, TrainConfig(batch_size=8, val_batch_size=16))
    assert isinstance(loader.sampler, ShardSampler)
    assert [i for _, y in loader for i in y.tolist()] == list(range(50))
    assert loader.batch_size == 16
