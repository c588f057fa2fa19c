"""Schedules drive the optimizer values that a real training step actually uses.

Each test trains a tiny model on a slice of sklearn's digits with an ordinary Ignite
``Engine`` and records the ``lr``/``momentum``/``betas[0]`` inside the step, right
before ``optimizer.step()``. Expected values come from the torch scheduler stepped in
a hand-written loop at its textbook unit, or from closed forms.
"""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers.param_scheduler import (
    CosineAnnealingScheduler,
    LinearCyclicalScheduler,
    ReduceLROnPlateauScheduler,
)
from ignite.metrics import Average
from sklearn.datasets import load_digits
from torch import nn
from torch.optim import lr_scheduler as torch_sched

from ignitrain.config import ConfigError
from ignitrain.handlers.schedules import (
    Schedule,
    attach_schedule,
    build_schedule,
    param_values,
    resolve_placeholders,
    set_param_values,
)

EPOCHS, STEPS = 6, 4  # 24 iterations
TOTAL = EPOCHS * STEPS


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def batches():
    digits = load_digits()
    x = torch.tensor(digits.data[: 16 * STEPS], dtype=torch.float32) / 16
    y = torch.tensor(digits.target[: 16 * STEPS])
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, len(x), 16)]


def _optimizer(kind: str, model: nn.Module, lr: float = 0.1) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    if kind == "two_groups":
        return torch.optim.SGD(
            [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.02}],
            lr=lr,
            momentum=0.9,
        )
    raise AssertionError(kind)


class Run:
    """A tiny MLP, its optimizer and a training engine recording used values."""

    def __init__(self, batches, spec=None, *, kind="sgd", param="lr", warmup=0, **build):
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
        self.optimizer = _optimizer(kind, self.model)
        self.batches = batches
        self.used: list[list[float]] = []  # values at optimizer.step(), per iteration
        self.param = param
        self.engine = Engine(self._step)
        self.schedule = build_schedule(
            spec,
            self.optimizer,
            num_epochs=EPOCHS,
            steps_per_epoch=STEPS,
            warmup_steps=warmup,
            param_name=param,
            **build,
        )

    def _step(self, engine, batch):
        x, y = batch
        self.optimizer.zero_grad()
        loss = nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        self.used.append(param_values(self.optimizer, self.param))
        self.optimizer.step()
        return loss.item()

    def attach(self, **kwargs):
        self.handler = attach_schedule(self.engine, self.schedule, **kwargs)
        return self

    def run(self, epochs=EPOCHS):
        self.engine.run(self.batches, max_epochs=epochs)
        return [v[0] for v in self.used]


def _reference(make, *, per_epoch: bool, base: float = 0.1, momentum_of=None) -> list[float]:
    """Values of a torch scheduler stepped in a textbook loop (after each step/epoch)."""
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=base, momentum=0.9)
    sched = make(opt)
    values = []
    for _ in range(EPOCHS):
        for _ in range(STEPS):
            values.append(opt.param_groups[0]["momentum" if momentum_of else "lr"])
            opt.step()
            if not per_epoch:
                sched.step()
        if per_epoch:
            sched.step()
    return values


# Default parameters spelled out independently of the implementation (L = 6 epochs or
# 24 iterations).
REFERENCES = {
    "constant": (lambda o: torch_sched.ConstantLR(o, 1.0, total_iters=0), False),
    "step": (lambda o: torch_sched.StepLR(o, step_size=2, gamma=0.1), True),
    "multistep": (lambda o: torch_sched.MultiStepLR(o, milestones=[3, 4], gamma=0.1), True),
    "exponential": (lambda o: torch_sched.ExponentialLR(o, gamma=0.01 ** (1 / 6)), True),
    "cosine": (lambda o: torch_sched.CosineAnnealingLR(o, T_max=24), False),
    "cosine_restarts": (lambda o: torch_sched.CosineAnnealingWarmRestarts(o, T_0=8), False),
    "linear": (lambda o: torch_sched.LinearLR(o, 1.0, 0.0, total_iters=24), False),
    "polynomial": (lambda o: torch_sched.PolynomialLR(o, total_iters=24, power=1.0), False),
    "onecycle": (
        lambda o: torch_sched.OneCycleLR(o, max_lr=0.1, total_steps=24, cycle_momentum=False),
        False,
    ),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_named_lr_schedule_matches_torch_in_a_textbook_loop(batches, name):
    make, per_epoch = REFERENCES[name]
    used = Run(batches, name).attach().run()
    assert used == pytest.approx(_reference(make, per_epoch=per_epoch), rel=1e-12, abs=1e-15)
    assert len(set(used)) == (1 if name == "constant" else len(set(used)))


def test_step_defaults_decay_once_per_epoch_never_per_iteration(batches):
    run = Run(batches, "StepLR").attach()
    used = run.run()
    per_epoch = [used[e * STEPS : (e + 1) * STEPS] for e in range(EPOCHS)]
    assert all(len(set(epoch)) == 1 for epoch in per_epoch)  # constant inside an epoch
    expected = [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]  # step_size = 6 // 3 = 2 epochs
    assert [epoch[0] for epoch in per_epoch] == pytest.approx(expected)
    assert run.schedule.unit == "epoch"


def test_unit_override_makes_step_count_iterations(batches):
    used = Run(batches, {"name": "step", "step_size": 5, "gamma": 0.5, "unit": "iteration"})
    values = used.attach().run()
    assert values == pytest.approx([0.1 * 0.5 ** (i // 5) for i in range(TOTAL)])


def test_two_param_groups_follow_their_own_base(batches):
    run = Run(batches, "cosine", kind="two_groups").attach()
    run.run()
    for i, (first, second) in enumerate(run.used):
        factor = (1 + math.cos(math.pi * i / TOTAL)) / 2
        assert first == pytest.approx(0.1 * factor, abs=1e-12)
        assert second == pytest.approx(0.02 * factor, abs=1e-12)


def test_piecewise_linear_with_placeholder_arithmetic(batches):
    spec = {
        "name": "piecewise_linear",
        "milestones_values": [[0, 0.0], ["{total_steps} // 2", 0.2], ["{total_steps}", 0.0]],
    }
    used = Run(batches, spec).attach().run()
    half = TOTAL // 2
    expected = [0.2 * i / half if i <= half else 0.2 * (TOTAL - i) / half for i in range(TOTAL)]
    assert used == pytest.approx(expected, abs=1e-12)


def test_placeholders_in_step_size_are_resolved(batches):
    # step_size = 24 // 8 = 3 iterations
    spec = {"name": "step", "step_size": "{total_steps} // 8", "unit": "iteration", "gamma": 0.5}
    used = Run(batches, spec).attach().run()
    assert used == pytest.approx([0.1 * 0.5 ** (i // 3) for i in range(TOTAL)])


def test_resolve_placeholders_arithmetic_and_errors():
    ctx = {"num_epochs": 6, "steps_per_epoch": 4, "total_steps": 24}
    assert resolve_placeholders("{total_steps}", ctx) == 24
    assert resolve_placeholders("({num_epochs} - 1) * {steps_per_epoch} / 2", ctx) == 10.0
    assert resolve_placeholders(["{num_epochs} // 2", "cos", 3], ctx) == [3, "cos", 3]
    with pytest.raises(ConfigError, match=r"unknown placeholder \{total_step\}.*total_steps"):
        resolve_placeholders("{total_step}", ctx)
    with pytest.raises(ConfigError, match="arithmetic"):
        resolve_placeholders("__import__('os').getcwd() or {num_epochs}", ctx)


def test_warmup_ramps_linearly_then_cosine_over_the_rest(batches):
    warmup = 6
    used = Run(batches, "cosine", warmup=warmup).attach().run()
    assert used[:warmup] == pytest.approx([0.1 * (t + 1) / warmup for t in range(warmup)])
    rest = TOTAL - warmup
    expected = [0.1 * (1 + math.cos(math.pi * k / rest)) / 2 for k in range(rest)]
    assert used[warmup:] == pytest.approx(expected, abs=1e-12)


def test_warmup_start_factor(batches):
    used = Run(batches, "constant", warmup=4, warmup_start_factor=0.2).attach().run()
    assert used[:5] == pytest.approx([0.04, 0.06, 0.08, 0.1, 0.1])


def test_warmup_in_front_of_an_epoch_schedule_ticks_per_iteration(batches):
    # Warm-up covers epoch 1 and half of epoch 2; the epoch schedule then advances at
    # the end of epoch 2, the first epoch end after warm-up.
    spec = {"name": "step", "step_size": 1, "gamma": 0.5, "warmup_steps": 6}
    used = Run(batches, spec).attach().run()
    assert used[:6] == pytest.approx([0.1 * (t + 1) / 6 for t in range(6)])
    assert used[6:8] == pytest.approx([0.1, 0.1])
    for epoch in range(2, EPOCHS):
        chunk = used[epoch * STEPS : (epoch + 1) * STEPS]
        assert chunk == pytest.approx([0.1 * 0.5 ** (epoch - 1)] * STEPS)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_cyclic_momentum_is_inverse_to_onecycle_lr(batches, kind):
    run = Run(batches, "onecycle", kind=kind)
    momentum = build_schedule(
        "cyclic_momentum",
        run.optimizer,
        num_epochs=EPOCHS,
        steps_per_epoch=STEPS,
        param_name="momentum",
    )
    run.attach()
    attach_schedule(run.engine, momentum)
    seen: list[tuple[float, float, float]] = []
    run.engine.add_event_handler(
        Events.ITERATION_STARTED,
        lambda e: seen.append(
            (
                run.optimizer.param_groups[0]["lr"],
                param_values(run.optimizer, "momentum")[0],
                run.optimizer.param_groups[0].get("betas", (0, 0.999))[1],
            )
        ),
    )
    run.run()
    lrs, moms, beta2 = zip(*seen)
    reference = _reference(
        lambda o: torch_sched.OneCycleLR(o, max_lr=0.1, total_steps=24),
        per_epoch=False,
        momentum_of=True,
    )
    assert list(moms) == pytest.approx(reference, abs=1e-12)
    assert moms[0] == pytest.approx(0.95) and min(moms) == pytest.approx(0.85, abs=1e-3)
    assert lrs.index(max(lrs)) == moms.index(min(moms))  # momentum lowest at the LR peak
    assert set(beta2) == {0.999}  # Adam's betas[1] is never touched


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_step_shape_on_momentum_and_betas(batches, kind):
    spec = {"name": "step", "step_size": 1, "gamma": 0.5}
    run = Run(batches, spec, kind=kind, param="momentum").attach()
    used = run.run()
    assert used == pytest.approx([0.9 * 0.5 ** (i // STEPS) for i in range(TOTAL)])
    assert run.optimizer.param_groups[0]["lr"] == 0.1  # the LR is left alone
    if kind == "adam":
        assert run.optimizer.param_groups[0]["betas"][1] == 0.999


def _scores_evaluator(scores, name="loss"):
    """An evaluator whose ``name`` metric is ignite's Average over one crafted value."""
    evaluator = Engine(lambda engine, batch: batch)
    Average().attach(evaluator, name)
    feed = iter(scores)
    return evaluator, lambda: evaluator.run([torch.tensor(next(feed))])


def test_plateau_reduces_after_patience_with_mode_inferred_from_loss(batches):
    evaluator, validate = _scores_evaluator([1.0, 0.9, 0.95, 0.95, 0.8, 0.85, 0.85, 0.9])
    run = Run(batches, {"name": "plateau", "patience": 1, "factor": 0.5}).attach(
        evaluator=evaluator, metric="loss"
    )
    run.engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validate())
    used = run.run(epochs=7)
    per_epoch = [used[e * STEPS] for e in range(7)]
    # Bad evaluations after epochs 3, 4 -> halve; after 6, 7 -> halve again.
    assert per_epoch == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05])
    assert run.schedule.mode == "min"
    assert param_values(run.optimizer) == pytest.approx([0.025])
    validate()  # evaluating again at the same training iteration does not step
    assert param_values(run.optimizer) == pytest.approx([0.025])


def test_plateau_infers_max_for_accuracy(batches):
    evaluator, validate = _scores_evaluator([0.5, 0.6, 0.7, 0.8], name="accuracy")
    run = Run(batches, {"name": "plateau", "patience": 0}).attach(
        evaluator=evaluator, metric="accuracy"
    )
    run.engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validate())
    assert set(run.run(epochs=4)) == {0.1}  # rising accuracy is never a plateau
    assert run.schedule.mode == "max"


@pytest.mark.parametrize("kind", ["torch", "ignite"])
def test_plateau_scheduler_objects_skip_warmup_evaluations(batches, kind):
    evaluator, validate = _scores_evaluator([1.0, 2.0, 3.0, 4.0])
    run = Run(batches, None)
    if kind == "torch":
        obj = torch_sched.ReduceLROnPlateau(run.optimizer, patience=0, factor=0.5)
    else:
        obj = ReduceLROnPlateauScheduler(run.optimizer, "loss", patience=0, factor=0.5)
    run.schedule = build_schedule(
        obj, run.optimizer, num_epochs=EPOCHS, steps_per_epoch=STEPS, warmup_steps=STEPS
    )
    assert run.schedule.unit == "metric"
    run.attach(evaluator=evaluator, metric="loss")
    run.engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validate())
    used = run.run(epochs=4)
    # Epoch 1 is warm-up (its evaluation is ignored); epoch 2 sets the best (2.0);
    # epoch 3 is worse with patience 0 -> halve for epoch 4.
    assert used[:STEPS] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert used[STEPS:] == pytest.approx([0.1] * 2 * STEPS + [0.05] * STEPS)


def test_torch_scheduler_objects_and_factories(batches):
    run = Run(batches, None)
    run.schedule = build_schedule(
        torch_sched.StepLR(run.optimizer, step_size=1, gamma=0.5),
        run.optimizer,
        num_epochs=EPOCHS,
        steps_per_epoch=STEPS,
    )
    assert run.schedule.unit == "epoch"
    assert run.attach().run() == pytest.approx([0.1 * 0.5 ** (i // STEPS) for i in range(TOTAL)])

    run = Run(
        batches,
        lambda opt, epochs, steps: torch_sched.OneCycleLR(opt, 0.1, total_steps=epochs * steps),
    )
    assert run.schedule.unit == "iteration"
    reference = _reference(
        lambda o: torch_sched.OneCycleLR(o, max_lr=0.1, total_steps=24), per_epoch=False
    )
    assert run.attach().run() == pytest.approx(reference, abs=1e-12)


def test_ignite_param_scheduler_object_and_momentum_on_sgd(batches):
    run = Run(batches, None, param="momentum")
    ignite_sched = LinearCyclicalScheduler(run.optimizer, "momentum", 0.9, 0.5, cycle_size=8)
    run.schedule = build_schedule(
        ignite_sched,
        run.optimizer,
        num_epochs=EPOCHS,
        steps_per_epoch=STEPS,
        param_name="momentum",
    )
    expected = [0.5 + 0.4 * abs((i % 8) / 8 - 0.5) * 2 for i in range(TOTAL)]
    assert run.attach().run() == pytest.approx(expected, abs=1e-12)


def _save(*objs) -> list:
    buffer = io.BytesIO()
    torch.save([o.state_dict() for o in objs], buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # what a checkpoint must survive


RESUME_CASES = {
    "cosine+warmup": dict(spec="cosine", warmup=5),
    "step_epoch+warmup": dict(spec={"name": "step", "step_size": 1, "gamma": 0.5}, warmup=6),
    "multistep": dict(spec="multistep"),
    "cosine_restarts": dict(spec={"name": "cosine_restarts", "T_0": 5, "T_mult": 2}),
    "linear": dict(spec="linear"),
    "onecycle_adam": dict(spec="onecycle", kind="adam"),
    "piecewise": dict(
        spec={"name": "piecewise_linear", "milestones_values": [(0, 0.0), (20, 1.0)]}
    ),
    "cyclic_momentum_adam": dict(spec="cyclic_momentum", kind="adam", param="momentum"),
    "torch_object": dict(spec=lambda o, e, s: torch_sched.ExponentialLR(o, gamma=0.7)),
    "ignite_object": dict(spec=lambda o, e, s: CosineAnnealingScheduler(o, "lr", 0.1, 0.0, 10)),
}


@pytest.mark.parametrize("stop_at", [7, 12])  # mid-epoch and at an epoch end
@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_resume_continues_the_exact_sequence(batches, case, stop_at):
    kwargs = dict(RESUME_CASES[case])
    spec = kwargs.pop("spec")
    full = Run(batches, spec, **kwargs).attach()
    full.run()

    first = Run(batches, spec, **kwargs).attach()
    first.engine.add_event_handler(
        Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate()
    )
    first.run()
    assert len(first.used) == stop_at
    schedule_state, optimizer_state, engine_state = _save(
        first.schedule, first.optimizer, first.engine
    )

    second = Run(batches, spec, **kwargs).attach()
    second.optimizer.load_state_dict(optimizer_state)
    second.schedule.load_state_dict(schedule_state)
    second.engine.load_state_dict(engine_state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # restored together: no mismatch warning
        second.run()
    assert first.used + second.used == full.used  # bit for bit, every group


def test_resume_without_schedule_state_warns(batches):
    first = Run(batches, "cosine").attach()
    first.engine.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda e: e.terminate())
    first.run()
    second = Run(batches, "cosine").attach()
    second.engine.load_state_dict(first.engine.state_dict())
    with pytest.warns(UserWarning, match="restore the schedule's state_dict"):
        second.run()


def test_onecycle_holds_its_last_value_past_total_steps(batches):
    run = Run(batches, {"name": "onecycle", "total_steps": 10}).attach()
    used = run.run()
    assert len(used) == TOTAL and set(used[9:]) == {used[9]}
    assert used[9] == pytest.approx(0.1 / 25 / 1e4)


def test_param_values_and_set_param_values():
    model = nn.Linear(2, 1)
    adam = torch.optim.Adam(model.parameters(), betas=(0.8, 0.99))
    assert param_values(adam, "momentum") == [0.8]
    set_param_values(adam, "momentum", [0.7])
    assert adam.param_groups[0]["betas"] == (0.7, 0.99)
    with pytest.raises(ValueError, match="Adagrad has no 'momentum'"):
        param_values(torch.optim.Adagrad(model.parameters()), "momentum")


def test_none_spec_and_schedule_passthrough():
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    assert build_schedule(None, opt, num_epochs=1, steps_per_epoch=1) is None
    schedule = build_schedule("cosine", opt, num_epochs=1, steps_per_epoch=4)
    assert isinstance(schedule, Schedule)
    assert build_schedule(schedule, opt, num_epochs=1, steps_per_epoch=4) is schedule


def test_argument_validation():
    model = nn.Linear(2, 1)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    other = torch.optim.SGD(model.parameters(), lr=0.1)

    def build(spec, opt=sgd, **kw):
        kw = {"num_epochs": 3, "steps_per_epoch": 4, **kw}
        return build_schedule(spec, opt, **kw)

    with pytest.raises(ConfigError, match=r"lr_scheduler='cosin'.*Did you mean 'cosine'"):
        build("cosin")
    with pytest.raises(
        ConfigError, match=r"'step' has no parameter 'stepsize'.*'step_size'.*gamma"
    ):
        build({"name": "step", "stepsize": 3})
    with pytest.raises(ConfigError, match="momentum_scheduler='cyclic_momentum'"):
        build({"name": "onecycle", "cycle_momentum": True})
    with pytest.raises(ConfigError, match="needs a 'name'"):
        build({"step_size": 3})
    with pytest.raises(ConfigError, match=r"unit='epochs'.*Did you mean 'epoch'"):
        build({"name": "step", "unit": "epochs"})
    with pytest.raises(ConfigError, match="unit='epoch' is not allowed for schedule 'plateau'"):
        build({"name": "plateau", "unit": "epoch"})
    with pytest.raises(ConfigError, match="needs parameter 'milestones_values'"):
        build("piecewise_linear")
    with pytest.raises(ConfigError, match="use 'onecycle'"):
        build("cyclic_momentum")
    with pytest.raises(ConfigError, match="rejected parameters"):
        build({"name": "cosine_restarts", "T_0": 0})
    with pytest.raises(ValueError, match="Adagrad has no 'momentum'"):
        build("cyclic_momentum", torch.optim.Adagrad(model.parameters()), param_name="momentum")
    with pytest.raises(ValueError, match="param_name='betas'"):
        build("cosine", param_name="betas")
    with pytest.raises(ValueError, match="num_epochs=0"):
        build("cosine", num_epochs=0)
    with pytest.raises(ValueError, match="warmup_steps=-1"):
        build("cosine", warmup_steps=-1)
    with pytest.raises(TypeError, match="not a class"):
        build(torch_sched.StepLR)
    with pytest.raises(TypeError, match="expected None, a schedule name"):
        build(lambda opt, e, s: 42)
    with pytest.raises(ConfigError, match="another optimizer"):
        build(torch_sched.StepLR(other, 1))
    with pytest.raises(ConfigError, match="schedules lr, not momentum"):
        build(torch_sched.StepLR(sgd, 1), param_name="momentum")
    with pytest.raises(TypeError, match="expected a torch.optim.Optimizer"):
        build("cosine", opt="sgd")

    plateau = build("plateau")
    with pytest.raises(ValueError, match="pass evaluator=<Engine> and metric=<name>"):
        attach_schedule(Engine(lambda e, b: None), plateau)
    fixed = build({"name": "plateau", "mode": "max"})
    with pytest.raises(ValueError, match="contradicts"):
        attach_schedule(
            Engine(lambda e, b: None),
            fixed,
            evaluator=Engine(lambda e, b: None),
            metric="loss",
            mode="min",
        )
    with pytest.raises(TypeError, match="expected a Schedule"):
        attach_schedule(Engine(lambda e, b: None), torch_sched.StepLR(sgd, 1))
    schedule = build("cosine")
    with pytest.raises(ValueError, match="Cannot load the state of schedule 'step'"):
        schedule.load_state_dict(build("step").state_dict())


# -- scheduler habits of the trainers our users come from -----------------------------


def test_one_argument_factory_like_pytorch_accelerated(batches):
    import functools

    from ignitrain.handlers.schedules import Placeholder

    # partial(StepLR, step_size=..., gamma=...) is called with the optimizer only
    run = Run(batches, functools.partial(torch_sched.StepLR, step_size=2, gamma=0.1)).attach()
    assert run.run() == pytest.approx(_reference(REFERENCES["step"][0], per_epoch=True))
    # placeholders by pytorch-accelerated's names, in a partial's arguments
    factory = functools.partial(
        torch_sched.OneCycleLR,
        max_lr=0.1,
        epochs=Placeholder.NUM_EPOCHS,
        steps_per_epoch=Placeholder.NUM_UPDATE_STEPS_PER_EPOCH,
    )
    run = Run(batches, factory).attach()
    values = run.run()
    reference = _reference(
        lambda o: torch_sched.OneCycleLR(o, max_lr=0.1, epochs=EPOCHS, steps_per_epoch=STEPS),
        per_epoch=False,
    )
    assert values == pytest.approx(reference)
    # and in a spec dict, with TRAIN_DATALOADER_LEN / EVAL_DATALOADER_LEN
    context = {"TRAIN_DATALOADER_LEN": 8, "EVAL_DATALOADER_LEN": 3, "NUM_EPOCHS": 6}
    assert resolve_placeholders("{TRAIN_DATALOADER_LEN} * {NUM_EPOCHS}", context) == 48
    assert resolve_placeholders(Placeholder.EVAL_DATALOADER_LEN, context) == 3


def test_factory_with_a_wrong_signature_names_the_expected_one():
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"optimizer -> scheduler.*partial\(StepLR"):
        build_schedule(lambda a, b: None, opt, num_epochs=2, steps_per_epoch=3)


def test_old_three_argument_factory_still_works():
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    schedule = build_schedule(
        lambda o, epochs, steps: torch_sched.StepLR(o, step_size=epochs * steps),
        opt,
        num_epochs=2,
        steps_per_epoch=3,
    )
    assert schedule.name == "StepLR" and schedule.unit == "epoch"


def test_lr_writer_guard_refuses_a_second_writer_of_the_same_value(batches):
    from ignite.handlers.param_scheduler import ConcatScheduler, ParamGroupScheduler

    from ignitrain.handlers.schedules import attach_lr_writer_guard

    run = Run(batches, "cosine").attach()
    attach_lr_writer_guard(run.engine, [(run.optimizer, "lr")])
    first = CosineAnnealingScheduler(run.optimizer, "lr", 0.1, 0.01, cycle_size=4)
    second = CosineAnnealingScheduler(run.optimizer, "lr", 0.01, 0.001, cycle_size=4)
    concat = ConcatScheduler([first, second], durations=[4])
    run.engine.add_event_handler(Events.ITERATION_STARTED(every=2), concat)
    with pytest.raises(RuntimeError, match=r"ConcatScheduler.*'lr'.*lr_scheduler=<the scheduler>"):
        run.run()

    # a scheduler of another value (momentum) or another optimizer is not a conflict
    run = Run(batches, "cosine").attach()
    attach_lr_writer_guard(run.engine, [(run.optimizer, "lr")])
    other = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    groups = ParamGroupScheduler(
        [CosineAnnealingScheduler(other, "lr", 0.1, 0.01, cycle_size=4)], names=["other"]
    )
    run.engine.add_event_handler(Events.ITERATION_STARTED, groups)
    momentum = CosineAnnealingScheduler(run.optimizer, "momentum", 0.9, 0.8, cycle_size=4)
    run.engine.add_event_handler(Events.ITERATION_STARTED, momentum)
    run.run(epochs=1)
    assert len(run.used) == STEPS


def test_schedule_counts_optimizer_steps_under_accumulation(batches):
    # 4 micro-batches per epoch, 3 per step: groups [1,2,3] [4] per epoch -> 2 steps/epoch
    run = Run(batches, None)
    run.schedule = build_schedule(
        {"name": "linear", "total_iters": "{total_steps}"},
        run.optimizer,
        num_epochs=EPOCHS,
        steps_per_epoch=2,
    )
    run.attach(accumulation_steps=3)
    values = run.run()
    steps = [0, 0, 0, 1, 2, 2, 2, 3]  # optimizer step index of each micro-batch
    expected = [0.1 * (1 - s / (EPOCHS * 2)) for s in steps]
    assert values[:8] == pytest.approx(expected)


def test_attach_schedule_validates_accumulation_steps(batches):
    run = Run(batches, "cosine")
    with pytest.raises(ValueError, match="accumulation_steps=0 is not allowed"):
        run.attach(accumulation_steps=0)
