"""The shared optimizer step: accumulation, clipping, AMP, NaN guard, checkpoint state."""

import contextlib
import copy
import math

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from ignitrain.steps import (
    NON_FINITE_LOSS,
    OptimizerStep,
    StepOptions,
    resolve_amp,
    supervised_evaluate,
    supervised_update,
    to_device,
)


def _setup(options, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, OptimizerStep(opt, model, options)


def _run(model, opt_step, batches, epochs=1, record=None, max_iters=None):
    def update(engine, batch):
        x, y = batch
        with opt_step.autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        stepped = opt_step.backward(engine, loss)
        if record is not None and stepped:
            record.append([p.detach().clone() for p in model.parameters()])
        return {"loss": loss.item()}

    engine = Engine(update)
    if max_iters:
        engine.run(batches, max_iters=max_iters)
    else:
        engine.run(batches, max_epochs=epochs)
    return engine


def _batches(n, size, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 6, generator=g), torch.randint(0, 3, (size,), generator=g))
        for _ in range(n)
    ]


def test_accumulation_equals_one_big_batch():
    k, b = 4, 5
    small = _batches(8, b)  # two groups of 4
    big = [
        (torch.cat([x for x, _ in small[i : i + k]]), torch.cat([y for _, y in small[i : i + k]]))
        for i in (0, 4)
    ]
    m1, _, s1 = _setup(StepOptions(accumulation_steps=k))
    m2, _, s2 = _setup(StepOptions())
    r1, r2 = [], []
    _run(m1, s1, small, record=r1)
    _run(m2, s2, big, record=r2)
    assert len(r1) == len(r2) == 2
    for a, b_ in zip(r1, r2):
        for p, q in zip(a, b_):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_trailing_partial_group_is_stepped_and_scaled_by_its_size():
    # epoch of 6 micro-batches with k=4: groups of 4 and 2, restarting each epoch
    small = _batches(6, 5)
    m1, _, s1 = _setup(StepOptions(accumulation_steps=4))
    r1 = []
    _run(m1, s1, small, epochs=2, record=r1)
    assert len(r1) == 4  # 2 steps per epoch, the partial group included
    m2, _, s2 = _setup(StepOptions())
    big = [
        (torch.cat([x for x, _ in small[:4]]), torch.cat([y for _, y in small[:4]])),
        (torch.cat([x for x, _ in small[4:]]), torch.cat([y for _, y in small[4:]])),
    ]
    r2 = []
    _run(m2, s2, big, epochs=2, record=r2)
    for a, b_ in zip(r1, r2):
        for p, q in zip(a, b_):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_group_positions():
    _, _, step = _setup(StepOptions(accumulation_steps=3))
    engine = Engine(lambda e, b: None)
    engine.state.epoch_length = 7
    seen = []
    for it in range(1, 15):
        engine.state.iteration = it
        seen.append(step.group(engine))
    # per epoch: sizes 3,3,3 | 3,3,3 | 1 ; last flags at positions 3, 6, 7
    assert [s for s, _, _ in seen[:7]] == [3, 3, 3, 3, 3, 3, 1]
    assert [i + 1 for i, (_, _, last) in enumerate(seen[:7]) if last] == [3, 6, 7]
    assert seen[7:] == seen[:7]


def test_clip_by_norm_applies_once_per_step():
    model, opt, step = _setup(StepOptions(max_grad_norm=0.01))
    _run(model, step, _batches(1, 5))
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm.item() == pytest.approx(0.01, rel=1e-4)


def test_clip_by_value():
    model, _, step = _setup(StepOptions(grad_clip_value=1e-3))
    _run(model, step, _batches(1, 5))
    assert max(p.grad.abs().max().item() for p in model.parameters()) <= 1e-3 + 1e-9


def test_non_finite_loss_stops_before_the_update():
    model, _, step = _setup(StepOptions())
    before = copy.deepcopy(model.state_dict())
    batches = _batches(3, 5)
    batches[0] = (torch.full((5, 6), math.nan), batches[0][1])
    engine = _run(model, step, batches)
    assert engine.state.stop_reason == NON_FINITE_LOSS
    assert engine.state.iteration == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_bf16_autocast_on_cpu_trains():
    model, _, step = _setup(StepOptions(amp="bf16"))
    with step.autocast():
        out = model(torch.randn(2, 6))
    assert out.dtype == torch.bfloat16
    engine = _run(model, step, _batches(4, 5))
    assert math.isfinite(engine.state.output["loss"])


def test_fp16_uses_a_grad_scaler_whose_state_is_saved():
    model, _, step = _setup(StepOptions(amp="fp16"))
    assert step.scaler is not None
    state = step.state_dict()
    assert "scaler" in state and not state["pending"]


def test_mid_group_state_carries_accumulated_gradients():
    model, opt, step = _setup(StepOptions(accumulation_steps=4))
    engine = _run(model, step, _batches(8, 5), max_iters=2)  # 2 of 4 micro-batches done
    state = step.state_dict()
    assert state["pending"] and len(state["grads"]) == 4
    model2, opt2, step2 = _setup(StepOptions(accumulation_steps=4), seed=5)
    step2.load_state_dict(state)
    for p, g in zip(model2.parameters(), state["grads"]):
        assert torch.equal(p.grad, g)
    assert engine.state.iteration == 2


def test_resolve_amp_and_bad_optimizer():
    assert resolve_amp(False, torch.device("cpu")) is None
    assert resolve_amp(True, torch.device("cpu")) == "bf16"
    assert resolve_amp("auto", torch.device("cuda")) == "fp16"
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer, got str"):
        OptimizerStep("sgd", nn.Linear(1, 1), StepOptions())


def test_update_trains_in_training_mode_after_an_evaluation_left_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_step = OptimizerStep(opt, model, StepOptions())
    update = supervised_update(model, opt_step, nn.functional.cross_entropy, torch.device("cpu"))
    seen = []
    model.register_forward_pre_hook(lambda m, _: seen.append(m[1].training))
    engine = Engine(update)
    batches = _batches(3, 4)
    # validation after each epoch puts the whole model in eval mode
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: model.eval())
    engine.run(batches, max_epochs=2)
    assert seen == [True] * 6  # the dropout layer trained on every step of both epochs
    assert not model.training  # left as the last handler set it


def _supervised(options=None, seed=0):
    model, opt, opt_step = _setup(options or StepOptions(), seed)
    update = supervised_update(model, opt_step, nn.functional.cross_entropy, torch.device("cpu"))
    return model, opt, Engine(update)


def test_gradients_are_dropped_before_the_forward_not_after():
    # the previous step's gradients must not live through the next forward (peak memory)
    model, _, engine = _supervised()
    grads_at_forward = []
    model.register_forward_pre_hook(
        lambda m, _: grads_at_forward.append([p.grad is None for p in m.parameters()])
    )
    engine.run(_batches(4, 5), max_epochs=1)
    assert grads_at_forward == [[True] * 4] * 4
    assert all(p.grad is not None for p in model.parameters())  # kept after the step


def test_zeroing_before_the_forward_gives_the_same_updates_with_accumulation():
    trained = []
    for zero_first in (True, False):
        model, _, step = _setup(StepOptions(accumulation_steps=2))

        def update(engine, batch, step=step, model=model, zero_first=zero_first):
            if zero_first:
                step.zero_grad(engine)
            loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
            step.backward(engine, loss, value=loss.item() if zero_first else None)
            return loss.item()

        Engine(update).run(_batches(5, 4), max_epochs=2)
        trained.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*trained):
        assert torch.equal(a, b)


def test_nan_guard_reads_the_loss_float_the_step_already_has():
    model, _, engine = _supervised()
    before = copy.deepcopy(model.state_dict())
    batches = _batches(3, 5)
    batches[1] = (torch.full((5, 6), math.inf), batches[1][1])
    engine.run(batches, max_epochs=1)
    assert engine.state.stop_reason == NON_FINITE_LOSS and engine.state.iteration == 2
    assert math.isnan(engine.state.output["loss"])
    assert not torch.equal(model.state_dict()["0.weight"], before["0.weight"])  # step 1 applied
    assert all(p.grad is None for p in model.parameters())  # step 2's gradients dropped


def test_the_plain_step_updates_exactly_as_the_general_one():
    # issue 16: one micro-batch, no scaler, no clipping takes a shorter path through
    # backward(); a clipping threshold no gradient reaches takes the general one
    trained = []
    for options in (StepOptions(), StepOptions(max_grad_norm=1e9)):
        model, opt, engine = _supervised(options)
        steps = []
        opt.register_step_post_hook(lambda *_, steps=steps: steps.append(1))
        engine.run(_batches(6, 5), max_epochs=2)
        trained.append(([p.detach().clone() for p in model.parameters()], len(steps)))
    (plain, plain_steps), (general, general_steps) = trained
    assert plain_steps == general_steps == 12
    assert all(torch.equal(a, b) for a, b in zip(plain, general))


def test_to_device_keeps_tensors_already_there():
    x = torch.randn(3, 2)
    batch = to_device({"x": x, "y": [x, 1]}, torch.device("cpu"))
    assert batch["x"] is x and batch["y"][0] is x and batch["y"][1] == 1
    # issue 16: a tuple with nothing to move is returned itself, not rebuilt per step
    pair = (x, torch.arange(3))
    assert to_device(pair, torch.device("cpu")) is pair
    moved = to_device(pair, torch.device("meta"))
    assert isinstance(moved, tuple) and all(t.device.type == "meta" for t in moved)
    assert moved[0].shape == x.shape and pair[0].device.type == "cpu"


def test_evaluate_leaves_an_eval_model_alone():
    calls = []

    class Counted(nn.Linear):
        def train(self, mode=True):
            calls.append(mode)
            return super().train(mode)

    model = Counted(6, 3)
    evaluate = supervised_evaluate(model, torch.device("cpu"), contextlib.nullcontext)
    Engine(evaluate).run(_batches(4, 2), max_epochs=1)
    assert calls == [False]  # one .eval() for the whole run, not one per batch
    assert not model.training
