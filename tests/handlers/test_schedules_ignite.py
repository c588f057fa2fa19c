"""What Ignite's schedulers cannot do, which is why the pieces named in
``ignitrain.handlers.schedules``' docstring are kept custom; and the Ignite schedulers
the named schedules are now made of (``ignitrain.handlers.schedules.named``).

Each ``test_ignite_*`` test reproduces the Ignite limitation or defect on Ignite alone.
"""

from __future__ import annotations

import dataclasses
import io
import pickle

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers.param_scheduler import (
    CosineAnnealingScheduler,
    LRScheduler,
    ParamGroupScheduler,
    PiecewiseLinear,
    ReduceLROnPlateauScheduler,
    create_lr_scheduler_with_warmup,
)
from torch.optim import lr_scheduler as torch_sched

from ignitrain import registry
from ignitrain.config import ConfigError, TrainConfig
from ignitrain.handlers.schedules import attach_schedule, build_schedule, named
from ignitrain.handlers.schedules.build import BuildOptions, check_int, check_unit
from ignitrain.handlers.schedules.drivers import IgniteDriver

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 4  # iterations per epoch


def _sgd(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, momentum=0.9)


def _lrs(optimizer, attach, epochs: int = 3) -> list[float]:
    engine = Engine(lambda e, b: None)
    attach(engine)
    seen: list[float] = []
    engine.add_event_handler(
        Events.ITERATION_STARTED, lambda e: seen.append(optimizer.param_groups[0]["lr"])
    )
    engine.run([0] * STEPS, max_epochs=epochs)
    return seen


def test_ignite_warmup_cannot_front_an_epoch_schedule():
    # create_lr_scheduler_with_warmup returns one scheduler for one event: at
    # ITERATION_STARTED the StepLR(step_size=1) behind the warm-up decays every iteration.
    opt = _sgd()
    ignite = create_lr_scheduler_with_warmup(
        LRScheduler(torch_sched.StepLR(opt, step_size=1, gamma=0.5)),
        warmup_start_value=0.0,
        warmup_duration=STEPS,
    )
    seen = _lrs(opt, lambda e: e.add_event_handler(Events.ITERATION_STARTED, ignite))
    after = seen[STEPS + 1 : 2 * STEPS]
    assert len(set(after)) == len(after)  # a new value at every iteration of epoch 2

    # ignitrain: the same warm-up in front of an epoch schedule decays once per epoch
    opt = _sgd()
    spec = {"name": "step", "step_size": 1, "gamma": 0.5}
    schedule = build_schedule(spec, opt, num_epochs=3, steps_per_epoch=STEPS, warmup_steps=STEPS)
    seen = _lrs(opt, lambda e: attach_schedule(e, schedule))
    assert seen[STEPS:] == pytest.approx([0.1] * STEPS + [0.05] * STEPS)


def test_ignite_scheduler_cannot_write_betas():
    adam = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.1, betas=(0.9, 0.99))
    CosineAnnealingScheduler(adam, "momentum", 0.95, 0.85, cycle_size=4)(None)
    group = adam.param_groups[0]
    assert group["betas"] == (0.9, 0.99) and group["momentum"] == 0.95  # a dead key
    schedule = build_schedule(
        "cyclic_momentum", adam, num_epochs=1, steps_per_epoch=8, param_name="momentum"
    )
    schedule.iteration_started(1)
    assert group["betas"][0] == pytest.approx(0.95) and group["betas"][1] == 0.99


def test_ignite_plateau_needs_the_metric_at_construction():
    with pytest.raises(TypeError, match="metric_name"):
        ReduceLROnPlateauScheduler(_sgd())  # ignitrain knows the metric only at attach


def test_ignite_lr_scheduler_is_one_step_ahead_at_its_first_call():
    opt = _sgd()
    LRScheduler(torch_sched.ExponentialLR(opt, gamma=0.5))(None)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # the first value is 0.1
    # ignitrain's driver marks that call as torch's initial step
    opt = _sgd()
    scheduler = LRScheduler(torch_sched.ExponentialLR(opt, gamma=0.5))
    driver = IgniteDriver(scheduler, target=opt, owns_optimizer=False)
    assert driver.start() == [0.1]
    assert driver.advance() == pytest.approx([0.05])


def test_ignite_lr_scheduler_state_of_warm_restarts():
    opt = _sgd()
    wrapped = LRScheduler(torch_sched.CosineAnnealingWarmRestarts(opt, T_0=3))
    buffer = io.BytesIO()
    torch.save(wrapped.state_dict(), buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(buffer, weights_only=True)  # holds Ignite's private wrapper object

    def run(stop=None, state=None):
        opt = _sgd()
        sched = torch_sched.CosineAnnealingWarmRestarts(opt, T_0=3)
        schedule = build_schedule(sched, opt, num_epochs=1, steps_per_epoch=8, unit="iteration")
        if state is not None:
            schedule.load_state_dict(state)
        values = [schedule.iteration_started(1)[0] for _ in range(stop or 8)]
        buffer = io.BytesIO()
        torch.save(schedule.state_dict(), buffer)
        buffer.seek(0)
        return values, torch.load(buffer, weights_only=True)

    full, _ = run()
    first, state = run(stop=5)
    rest, _ = run(stop=3, state=state)
    assert first + rest == full


def test_named_schedules_are_ignite_schedulers():
    opt = torch.optim.SGD(
        [
            {"params": [torch.zeros(1, requires_grad=True)]},
            {"params": [torch.zeros(1)], "lr": 0.02},
        ],
        lr=0.1,
    )
    kinds = {
        "cosine": (ParamGroupScheduler, CosineAnnealingScheduler),
        "cosine_restarts": (ParamGroupScheduler, CosineAnnealingScheduler),
        "linear": (ParamGroupScheduler, PiecewiseLinear),
        "piecewise_linear": (PiecewiseLinear, None),
        "step": (LRScheduler, None),
        "onecycle": (LRScheduler, None),
    }
    for name, (outer, inner) in kinds.items():
        spec = (
            {"name": name, "milestones_values": [(0, 0.1), (4, 0.0)]} if "piece" in name else name
        )
        scheduler = build_schedule(spec, opt, num_epochs=3, steps_per_epoch=8)._driver.scheduler
        assert isinstance(scheduler, outer), name
        if inner is not None:
            assert all(isinstance(s, inner) for s in scheduler.schedulers), name


def test_schedule_names_have_one_source():
    assert registry.SCHEDULE_NAMES is named.SCHEDULE_NAMES == tuple(named.SHAPES)
    assert registry.canonical_schedule_name("SGDR") == "cosine_restarts"
    assert set(named.SCHEDULE_ALIASES.values()) <= set(named.SHAPES)
    with pytest.raises(ConfigError, match=r"lr_scheduler='cosinne'.*Did you mean 'cosine'"):
        TrainConfig(lr_scheduler="cosinne")
    with pytest.raises(AttributeError, match="no attribute 'SCHEDULE_NAME'"):
        registry.SCHEDULE_NAME  # noqa: B018


def test_options_validation():
    assert BuildOptions().param_name == "lr"
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign"):
        BuildOptions().unit = "epoch"  # frozen
    with pytest.raises(ValueError, match=r"warmup_steps=True is not allowed"):
        check_int(True, "warmup_steps", 0)
    with pytest.raises(ConfigError, match=r"unit='epoc'.*Did you mean 'epoch'"):
        check_unit("epoc", ("iteration", "epoch"), "lr_scheduler", "step")
    with pytest.raises(ConfigError, match="rejected parameters"):
        build_schedule(
            {"name": "cosine_restarts", "T_0": 2, "T_mult": 1.5},
            _sgd(),
            num_epochs=1,
            steps_per_epoch=8,
        )
    with pytest.raises(ConfigError, match="rejected parameters"):
        build_schedule(
            {"name": "linear", "total_iters": 0}, _sgd(), num_epochs=1, steps_per_epoch=8
        )


def test_linear_holds_its_end_value_like_torch():
    # linear holds its end value past total_iters, like torch's LinearLR
    opt = _sgd()
    schedule = build_schedule(
        {"name": "linear", "total_iters": 4, "end_factor": 0.5},
        opt,
        num_epochs=1,
        steps_per_epoch=8,
    )
    values = [schedule.iteration_started(1)[0] for _ in range(8)]
    assert values == pytest.approx([0.1, 0.0875, 0.075, 0.0625, 0.05, 0.05, 0.05, 0.05])


@pytest.mark.parametrize("name", ["cosine", "step", "onecycle"])
def test_a_schedule_state_of_ignitrain_0_1_still_loads(name):
    # 0.1.0 stepped a torch scheduler on the shadow optimizer and saved its state.
    makers = {
        "cosine": lambda o: torch_sched.CosineAnnealingLR(o, T_max=24, eta_min=0.0),
        "step": lambda o: torch_sched.StepLR(o, step_size=2, gamma=0.1),
        "onecycle": lambda o: torch_sched.OneCycleLR(
            o, max_lr=[0.1], total_steps=24, cycle_momentum=False
        ),
    }
    unit = "epoch" if name == "step" else "iteration"
    done = 3 if unit == "epoch" else 10  # epochs / iterations trained before the save

    def fresh():
        return build_schedule(name, _sgd(), num_epochs=6, steps_per_epoch=4)

    shadow = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    torch_scheduler = makers[name](shadow)
    for _ in range(done - 1):
        shadow.step()
        torch_scheduler.step()
    value = shadow.param_groups[0]["lr"]
    iterations = done * 4 if unit == "epoch" else done
    old_state = {
        "name": name,
        "unit": unit,
        "iterations": iterations,
        "values": [value],
        "written": [value],
        "last_metric_step": None,
        "epoch": done if unit == "epoch" else 3,
        "driver": {
            "scheduler": torch_scheduler.state_dict(),
            "param_groups": shadow.state_dict()["param_groups"],
        },
    }
    full = fresh()
    epochs = [1 + i // 4 for i in range(24)]
    expected = [full.iteration_started(e)[0] for e in epochs]
    resumed = fresh()
    resumed.load_state_dict(old_state)
    rest = [resumed.iteration_started(e)[0] for e in epochs[iterations:]]
    assert rest == pytest.approx(expected[iterations:], rel=1e-12, abs=1e-15)
