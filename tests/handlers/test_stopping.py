"""Stopping rules stop real Ignite engines at the expected epoch, with the reason recorded.

(What each module adds alone: test_metric_stopping.py, test_stop_limits.py,
test_stop_reasons.py; each behaviour is tested in one of them or here, not twice.)

Validation scores come from ignite's ``Average`` metric over values crafted per epoch,
so the epoch at which each rule must fire is known exactly.
"""

from __future__ import annotations

import io
import json
import math
import time

import ignite.distributed as idist
import pytest
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Average
from torch import nn

from ignitrain.distributed import free_port
from ignitrain.handlers.stopping import (
    STOP_EARLY,
    STOP_REASONS,
    STOP_TARGET,
    STOP_TIME,
    TargetChecker,
    agree_any,
    attach_early_stopping,
    attach_max_steps,
    attach_stop_when,
    attach_time_limit,
    stop,
    stop_reason,
)

STEPS = 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def batches():
    # Imported here: spawned workers import this module and need no sklearn.
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data[: 16 * STEPS], dtype=torch.float32) / 16
    y = torch.tensor(digits.target[: 16 * STEPS])
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, len(x), 16)]


def _trainer(step_seconds: float = 0.0) -> Engine:
    """A training engine fitting a tiny MLP on digits (optionally slowed down)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def update(engine, batch):
        x, y = batch
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if step_seconds:
            time.sleep(step_seconds)
        return loss.item()

    return Engine(update)


def _validation(trainer: Engine, scores: dict[str, list[float]]) -> Engine:
    """An evaluator run after every epoch; metric ``name`` is Average of ``scores[name][e]``."""
    evaluator = Engine(lambda engine, batch: batch)
    for name in scores:
        Average(output_transform=lambda out, name=name: out[name]).attach(evaluator, name)

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine):
        epoch = engine.state.epoch - 1
        evaluator.run([{name: torch.tensor(v[epoch]) for name, v in scores.items()}])

    return evaluator


def _roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# -- decision objects ----------------------------------------------------------------


def _fed(scores, **kwargs):
    """An early-stopping handler fed ``scores`` through a real evaluator, one per epoch."""
    trainer = Engine(lambda e, b: None)
    evaluator = Engine(lambda e, b: b)
    Average(output_transform=lambda out: out).attach(evaluator, "score")
    handler = attach_early_stopping(trainer, evaluator, "score", **kwargs)
    stops = []

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine):
        evaluator.run([torch.tensor(scores[engine.state.epoch - 1])])
        stops.append(engine.should_terminate is not False)

    trainer.run([0], max_epochs=len(scores))
    return handler, stops


def test_early_stopping_max_min_delta_and_nan():
    handler, stops = _fed((0.5, 0.6, 0.6, 0.59), patience=2, mode="max")
    assert stops == [False, False, False, True]
    assert handler.best == pytest.approx(0.6) and handler.counter == 2

    # 0.97 and 0.96 are within min_delta of the best 1.0: no improvement.
    handler, stops = _fed((1.0, 0.97, 0.96), patience=2, min_delta=0.05, mode="min")
    assert stops == [False, False, True]

    handler, stops = _fed((1.0, math.nan, 0.5, math.nan, math.nan), patience=2, mode="min")
    assert stops == [False, False, False, False, True]
    assert handler.best == 0.5


def test_ignite_early_stopping_takes_nan_as_an_improvement():
    # The defect EarlyStoppingHandler's NaN-safe score works around: Ignite's own
    # EarlyStopping resets its patience on a NaN and never stops afterwards.
    from ignite.handlers import EarlyStopping

    trainer, evaluator = Engine(lambda e, b: None), Engine(lambda e, b: None)
    scores = iter((0.5, 0.4, math.nan, 0.3, 0.2))
    ignite_rule = EarlyStopping(2, lambda engine: next(scores), trainer)
    for _ in range(3):
        ignite_rule(evaluator)
    assert ignite_rule.counter == 0 and math.isnan(ignite_rule.best_score)  # patience reset
    for _ in range(2):
        ignite_rule(evaluator)
    assert not trainer.should_terminate and ignite_rule.best_score == 0.3  # worse than 0.5
    # ignitrain's handler stops at the NaN, the second evaluation without improvement
    _, stops = _fed((0.5, 0.4, math.nan, 0.3, 0.2), patience=2, mode="max")
    assert stops == [False, False, True]  # stopped after the third epoch


def test_early_stopping_state_round_trip():
    original, _ = _fed((1.0, 0.8, 0.9, 0.85), patience=3, mode="min")
    trainer, evaluator = Engine(lambda e, b: None), Engine(lambda e, b: None)
    restored = attach_early_stopping(trainer, evaluator, "loss", patience=3, mode="min")
    restored.load_state_dict(_roundtrip(original.state_dict()))
    assert restored.best == pytest.approx(0.8) and restored.counter == 2
    assert isinstance(restored, __import__("ignite.handlers").handlers.EarlyStopping)


def test_target_checker_infers_directions_and_needs_all_at_once():
    checker = TargetChecker({"accuracy": 0.9, "val/loss": 0.3, "mae": 0.1})
    assert checker.modes == {"accuracy": "max", "val/loss": "min", "mae": "min"}
    assert not checker.update({"accuracy": 0.95, "val/loss": 0.2, "mae": 0.2})
    assert checker.status({"accuracy": 0.95, "val/loss": 0.2, "mae": 0.2}) == {
        "accuracy": True,
        "val/loss": True,
        "mae": False,
    }
    assert checker.update({"accuracy": 0.9, "val/loss": 0.3, "mae": 0.1})  # bounds included
    restored = TargetChecker({"accuracy": 0.9, "val/loss": 0.3, "mae": 0.1})
    restored.load_state_dict(_roundtrip(checker.state_dict()))
    assert restored.reached
    assert TargetChecker({"loss": 2.0}, modes={"loss": "max"}).update({"loss": 3.0})
    with pytest.raises(KeyError, match="'val/loss'.*Did you mean 'loss'"):
        checker.update({"accuracy": 0.9, "loss": 0.1, "mae": 0.0})
    with pytest.raises(KeyError, match="'accuarcy'.*Did you mean 'accuracy'"):
        TargetChecker({"accuarcy": 0.9}).update({"accuracy": 0.9})


# -- rules on engines ----------------------------------------------------------------


def test_early_stopping_stops_at_the_expected_epoch(batches):
    trainer = _trainer()
    evaluator = _validation(trainer, {"accuracy": [0.5, 0.6, 0.6, 0.55, 0.58, 0.7, 0.8]})
    handler = attach_early_stopping(trainer, evaluator, "accuracy", patience=3)
    assert stop_reason(trainer) is None
    trainer.run(batches, max_epochs=7)
    # best 0.6 at epoch 2; epochs 3, 4, 5 do not improve -> stop after epoch 5
    assert trainer.state.epoch == 5 and trainer.state.iteration == 5 * STEPS
    assert stop_reason(trainer) == STOP_EARLY
    assert handler.best == pytest.approx(0.6) and handler.counter == 3


def test_early_stopping_on_loss_infers_min_and_survives_resume(batches):
    scores = {"loss": [1.0, 0.8, 0.9, 0.85, 0.82, 0.5]}
    trainer = _trainer()
    handler = attach_early_stopping(trainer, _validation(trainer, scores), "loss", patience=3)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=3), lambda e: e.terminate())
    trainer.run(batches, max_epochs=6)
    assert trainer.state.epoch == 3 and handler.counter == 1
    saved = _roundtrip(handler.state_dict())

    resumed = _trainer()
    handler = attach_early_stopping(resumed, _validation(resumed, scores), "loss", patience=3)
    handler.load_state_dict(saved)
    resumed.load_state_dict({"iteration": 3 * STEPS, "epoch_length": STEPS, "max_epochs": 6})
    resumed.run(batches)
    assert resumed.state.epoch == 5 and stop_reason(resumed) == STOP_EARLY


def test_stop_when_stops_at_the_first_epoch_reaching_all_targets(batches):
    trainer = _trainer()
    scores = {"accuracy": [0.5, 0.92, 0.95, 0.97, 0.99], "loss": [1.0, 0.5, 0.25, 0.2, 0.1]}
    handler = attach_stop_when(
        trainer, _validation(trainer, scores), {"accuracy": 0.9, "loss": 0.3}
    )
    trainer.run(batches, max_epochs=5)
    # accuracy reaches 0.9 at epoch 2, loss <= 0.3 only at epoch 3
    assert trainer.state.epoch == 3 and stop_reason(trainer) == STOP_TARGET
    assert handler.checker.reached


def test_first_reason_wins_when_two_rules_fire_together(batches):
    trainer = _trainer()
    evaluator = _validation(trainer, {"accuracy": [0.99, 0.5]})
    attach_stop_when(trainer, evaluator, {"accuracy": 0.9})
    attach_early_stopping(trainer, evaluator, "accuracy", patience=1)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: stop(e, "custom"))
    trainer.run(batches, max_epochs=2)
    assert trainer.state.epoch == 1 and stop_reason(trainer) == STOP_TARGET


def test_time_limit_stops_and_accumulates_across_resume(batches):
    trainer = _trainer(step_seconds=0.02)
    handler = attach_time_limit(trainer, 0.1)
    trainer.run(batches, max_epochs=50)
    assert stop_reason(trainer) == STOP_TIME
    assert 0.1 <= handler.elapsed < 1.0
    assert 3 <= trainer.state.iteration < 20  # ~0.1 s / 0.02 s per step, generous bounds

    resumed = _trainer(step_seconds=0.02)
    resumed_handler = attach_time_limit(resumed, 0.1)
    resumed_handler.load_state_dict(_roundtrip({"elapsed": 0.09}))
    resumed.run(batches, max_epochs=50)
    assert resumed.state.iteration == 1  # 0.09 s + one step > 0.1 s
    assert stop_reason(resumed) == STOP_TIME


def test_handlers_can_be_removed(batches):
    trainer = _trainer()
    attach_max_steps(trainer, 2).remove()
    trainer.run(batches, max_epochs=1)
    assert trainer.state.iteration == STEPS and stop_reason(trainer) is None


def test_reason_constants():
    assert STOP_REASONS == (
        "early_stopping",
        "target_reached",
        "non_finite_loss",
        "time_limit",
        "max_steps",
        "signal",
    )


def test_agree_any_single_process():
    assert agree_any(True) is True and agree_any(False) is False


def _time_limit_worker(local_rank: int, out_dir: str) -> None:
    # Rank 1's steps are slow: only its clock crosses the limit, yet both ranks stop
    # together because the decision is agreed every iteration.
    rank = idist.get_rank()
    trainer = Engine(lambda engine, batch: time.sleep(0.03 if rank == 1 else 0.0))
    attach_time_limit(trainer, 0.2)
    trainer.run(range(10), max_epochs=10)
    record = {
        "iteration": trainer.state.iteration,
        "reason": stop_reason(trainer),
        "any": [agree_any(rank == 0), agree_any(False)],
    }
    with open(f"{out_dir}/rank{rank}.json", "w") as fh:
        json.dump(record, fh)


@pytest.mark.slow
def test_time_limit_is_agreed_across_processes(tmp_path):
    with idist.Parallel(backend="gloo", nproc_per_node=2, master_port=free_port()) as parallel:
        parallel.run(_time_limit_worker, str(tmp_path))
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert records[0] == records[1]
    assert records[0]["reason"] == STOP_TIME and records[0]["iteration"] < 100
    assert records[0]["any"] == [True, False]


def test_argument_validation():
    trainer, evaluator = Engine(lambda e, b: None), Engine(lambda e, b: None)
    with pytest.raises(ValueError, match="patience=0 is not allowed"):
        attach_early_stopping(trainer, evaluator, "accuracy", patience=0)
    with pytest.raises(ValueError, match="min_delta=-0.1 is not allowed"):
        attach_early_stopping(trainer, evaluator, "accuracy", patience=1, min_delta=-0.1)
    with pytest.raises(ValueError, match="mode='maxi'.*Did you mean 'max'"):
        attach_early_stopping(trainer, evaluator, "accuracy", patience=1, mode="maxi")
    with pytest.raises(ValueError, match="mode='up'"):
        attach_early_stopping(trainer, evaluator, "accuracy", patience=2, mode="up")
    with pytest.raises(TypeError, match="metric=3"):
        attach_early_stopping(trainer, evaluator, 3, patience=2)
    with pytest.raises(TypeError, match="evaluator=None"):
        attach_early_stopping(trainer, None, "accuracy", patience=2)
    with pytest.raises(TypeError, match="non-empty mapping"):
        attach_stop_when(trainer, evaluator, {})
    with pytest.raises(TypeError, match="mapped to numbers"):
        TargetChecker({"accuracy": "high"})
    with pytest.raises(ValueError, match="without a target"):
        TargetChecker({"accuracy": 0.9}, modes={"loss": "min"})
    with pytest.raises(TypeError, match="engine='trainer'"):
        attach_max_steps("trainer", 3)
    with pytest.raises(TypeError, match="reason=None"):
        stop(trainer, None)


def test_missing_metric_names_the_computed_ones(batches):
    trainer = _trainer()
    attach_early_stopping(
        trainer, _validation(trainer, {"accuracy": [0.5]}), "accuarcy", patience=1
    )
    with pytest.raises(
        KeyError, match="'accuarcy'.*Did you mean 'accuracy'.*Computed metrics: accuracy"
    ):
        trainer.run(batches, max_epochs=1)
