"""The LR range test on a real MLP and sklearn's digits: a sane suggestion, state restored."""

from __future__ import annotations

import math
import random
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ignitrain.lr_finder import LRFinderResult, find_lr, suggest_lr

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16
    return TensorDataset(x, torch.tensor(data.target))


def _setup(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10))
    if kind == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def train_step(engine, batch):  # the shape of ignitrain's steps: a dict with "loss"
        model.train()
        x, y = batch
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach(), "batch_size": len(y)}

    return model, optimizer, train_step


def _warm_up(model, optimizer, train_step, loader, steps=3):
    # Give the optimizer real state (momentum buffers / Adam moments) to restore.
    for _, batch in zip(range(steps), loader):
        train_step(None, batch)
    model.eval()  # a mode find_lr must put back


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_suggestion_is_sane_and_everything_is_restored(digits, kind):
    model, optimizer, train_step = _setup(kind)
    loader = DataLoader(digits, batch_size=64, shuffle=True)
    _warm_up(model, optimizer, train_step, loader)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    opt_tensors = {(i, k): v.clone() for i, s in opt_state["state"].items() for k, v in s.items()}
    groups = [{k: v for k, v in g.items()} for g in opt_state["param_groups"]]
    grads = [p.grad.clone() for p in model.parameters()]
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())

    result = find_lr(model, optimizer, train_step, loader, num_iter=100)

    assert 1e-4 <= result.suggestion <= 1.0
    assert len(result.lrs) == len(result.losses) == len(result.raw_losses) >= 30
    assert result.lrs[0] == pytest.approx(1e-7)
    ratios = np.diff(np.log(result.lrs))
    assert np.allclose(ratios, np.log(1e8) / 99)  # one geometric ramp 1e-7 -> 10
    assert min(result.losses) < result.losses[0]  # it learned something on the way
    # restored exactly
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    restored = optimizer.state_dict()
    for (i, k), value in opt_tensors.items():
        assert torch.equal(restored["state"][i][k], value), (i, k)
    assert restored["param_groups"] == groups
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert not any(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert np.array_equal(np.random.get_state()[1], rng[1]) and random.getstate() == rng[2]


def test_divergence_stops_early(digits):
    model, optimizer, train_step = _setup("sgd")
    loader = DataLoader(digits, batch_size=64, shuffle=True)
    result = find_lr(model, optimizer, train_step, loader, start_lr=1e-3, end_lr=1e4, num_iter=60)
    assert result.stopped_early and len(result.lrs) < 60
    last, best = result.losses[-1], min(result.losses[:-1])
    assert not np.isfinite(last) or last > 5.0 * best


def test_data_is_cycled_and_float_losses_accepted():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(8, 3), torch.randn(8, 1)) for _ in range(2)]  # 2 batches, 20 iters

    def train_step(engine, batch):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(batch[0]), batch[1])
        loss.backward()
        optimizer.step()
        return loss.item()

    result = find_lr(model, optimizer, train_step, data, start_lr=1e-4, end_lr=1e-1, num_iter=20)
    assert len(result.raw_losses) == 20 and not result.stopped_early


def test_restored_even_when_the_step_raises(digits):
    model, optimizer, train_step = _setup("adam")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def failing_step(engine, batch):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("boom")
        return train_step(engine, batch)

    with pytest.raises(RuntimeError, match="boom"):
        find_lr(model, optimizer, failing_step, DataLoader(digits, batch_size=64), num_iter=10)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert optimizer.state_dict()["state"] == {}
    assert optimizer.param_groups[0]["lr"] == 1e-3


def test_suggest_lr_picks_the_steepest_descent():
    lrs = list(np.logspace(-5, 0, 50))
    # loss falls fastest at lr = 1e-3 (a tanh step in log-space), minimum at the end
    losses = [2.0 - np.tanh(2 * (np.log10(lr) + 3)) for lr in lrs]
    assert suggest_lr(lrs, losses) == pytest.approx(1e-3, rel=0.3)
    assert suggest_lr([1e-3, 1e-2], [1.0, 0.5]) is None


def test_plot(tmp_path, monkeypatch):
    result = LRFinderResult(
        lrs=[1e-4, 1e-3, 1e-2, 1e-1],
        losses=[2.0, 1.5, 1.0, 3.0],
        raw_losses=[2, 1.4, 1.1, 3],
        suggestion=1e-3,
    )
    path = result.plot(tmp_path / "sub" / "lr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match="pip install matplotlib"):
        result.plot(tmp_path / "again.png")


def test_argument_validation(digits):
    model, optimizer, train_step = _setup("sgd")
    data = DataLoader(digits, batch_size=64)
    with pytest.raises(ValueError, match="end_lr=1e-08 is not allowed.*start_lr"):
        find_lr(model, optimizer, train_step, data, end_lr=1e-8)
    with pytest.raises(ValueError, match="num_iter=1 is not allowed"):
        find_lr(model, optimizer, train_step, data, num_iter=1)
    with pytest.raises(ValueError, match="smooth=0 is not allowed"):
        find_lr(model, optimizer, train_step, data, smooth=0)
    with pytest.raises(ValueError, match="diverge_threshold=1 is not allowed"):
        find_lr(model, optimizer, train_step, data, diverge_threshold=1)
    with pytest.raises(ValueError, match="start_lr=-1 is not allowed"):
        find_lr(model, optimizer, train_step, data, start_lr=-1)
    with pytest.raises(TypeError, match="optimizer='sgd'"):
        find_lr(model, "sgd", train_step, data)
    with pytest.raises(ValueError, match="data yielded no batches"):
        find_lr(model, optimizer, train_step, [])
    with pytest.raises(KeyError, match="without 'loss'"):
        find_lr(model, optimizer, lambda e, b: {"loss_value": 1.0}, data, num_iter=3)
    with pytest.raises(TypeError, match="returned str"):
        find_lr(model, optimizer, lambda e, b: "1.0", data, num_iter=3)


# -- the Ignite defects find_lr works around ------------------------------------------


def _tiny():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    data = [(torch.randn(8, 3), torch.randn(8, 1)) for _ in range(2)]

    def train_step(engine, batch):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(batch[0]), batch[1])
        loss.backward()
        optimizer.step()
        return loss.item()

    return model, optimizer, train_step, data


def test_ignite_lr_finder_does_not_restore_when_the_step_raises():
    from ignite.engine import Engine
    from ignite.handlers import FastaiLRFinder

    model, optimizer, train_step, data = _tiny()
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    def failing(engine, batch):
        if engine.state.iteration == 3:
            raise RuntimeError("boom")
        return train_step(engine, batch)

    engine = Engine(failing)
    with pytest.raises(RuntimeError, match="boom"):
        with FastaiLRFinder().attach(engine, {"model": model, "optimizer": optimizer}) as run:
            run.run(data * 5, max_epochs=1)
    # Ignite left the model trained and the LR on its ramp: find_lr's try/finally exists
    assert not torch.equal(model.weight, weights["weight"])
    assert optimizer.param_groups[0]["lr"] != 0.5


@pytest.mark.filterwarnings("ignore:Run completed without loss diverging")
def test_ignite_lr_finder_ramp_is_shifted_and_find_lr_records_the_used_lr():
    from ignite.engine import Engine, Events
    from ignite.handlers import FastaiLRFinder

    model, optimizer, train_step, data = _tiny()
    used = []
    engine = Engine(train_step)
    engine.add_event_handler(
        Events.ITERATION_STARTED, lambda e: used.append(optimizer.param_groups[0]["lr"])
    )
    finder = FastaiLRFinder()
    to_save = {"model": model, "optimizer": optimizer}
    with finder.attach(engine, to_save, num_iter=5, start_lr=1e-4, end_lr=1.0) as run:
        run.run(data * 3, max_epochs=1)
    logged = finder.get_results()["lr"]
    assert used[0] != 1e-4 and logged[:-1] == pytest.approx(used[1:])  # logged one ahead

    result = find_lr(model, optimizer, train_step, data, start_lr=1e-4, end_lr=1.0, num_iter=5)
    assert result.lrs == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])


def test_a_nan_loss_stops_the_sweep():
    model, optimizer, train_step, data = _tiny()

    def nan_at_four(engine, batch):
        loss = train_step(engine, batch)
        return math.nan if engine.state.iteration == 4 else loss

    result = find_lr(model, optimizer, nan_at_four, data, num_iter=20)
    assert result.stopped_early and len(result.raw_losses) == 4
    assert math.isnan(result.raw_losses[-1]) and len(result.lrs) == 4


def test_range_test_options_group_the_ramp_and_keywords_still_work():
    from ignitrain.lr_finder import RangeTestOptions

    def run(**kwargs):
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        data = [(torch.randn(8, 3), torch.randn(8, 1)) for _ in range(2)]

        def train_step(engine, batch):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(batch[0]), batch[1])
            loss.backward()
            optimizer.step()
            return loss.item()

        return find_lr(model, optimizer, train_step, data, **kwargs)

    options = RangeTestOptions(start_lr=1e-4, end_lr=1e-1, num_iter=6)
    by_options = run(options=options)
    by_keywords = run(start_lr=1e-4, end_lr=1e-1, num_iter=6)
    assert by_options.lrs == by_keywords.lrs and len(by_options.lrs) == 6
    assert run(options=options, num_iter=4).lrs == pytest.approx(
        [1e-4 * 1000 ** (i / 3) for i in range(4)]
    )
    with pytest.raises(TypeError, match=r"unknown option 'num_iters'.*Did you mean 'num_iter'"):
        run(num_iters=5)
    with pytest.raises(ValueError, match=r"smooth=0 is not allowed"):
        RangeTestOptions(smooth=0)
    with pytest.raises(TypeError, match="expected a RangeTestOptions"):
        run(options={"num_iter": 5})
