"""Time and step limits on plain Ignite engines."""

import pytest
from ignite.engine import Engine

from ignitrain.handlers.stop_limits import (
    attach_max_steps,
    attach_time_limit,
    optimizer_steps,
)
from ignitrain.handlers.stop_reasons import STOP_MAX_STEPS, STOP_TIME, stop_reason


def test_optimizer_steps_count_accumulation_groups_within_epochs():
    assert optimizer_steps(7, 10) == 7
    assert optimizer_steps(10, 10, 4) == 3  # 4 + 4 + a trailing group of 2
    assert optimizer_steps(13, 10, 4) == 3 + 0
    assert optimizer_steps(14, 10, 4) == 4
    assert optimizer_steps(9, None, 4) == 2


def test_max_steps_stops_mid_epoch_and_a_finished_run_at_once():
    engine = Engine(lambda e, b: None)
    handler = attach_max_steps(engine, 12, accumulation_steps=2)
    engine.run(range(10), max_epochs=5)
    assert engine.state.iteration == 24 and stop_reason(engine) == STOP_MAX_STEPS
    engine.state.max_epochs = 6
    engine.run(range(10), max_epochs=6)  # resumed past the limit: no further step
    assert engine.state.iteration == 24
    handler.remove()


def test_time_limit_counts_run_time_only_and_survives_a_resume():
    engine = Engine(lambda e, b: None)
    handler = attach_time_limit(engine, 1e-9)
    engine.run(range(10), max_epochs=2)
    # checked at STARTED too: an exhausted budget stops before the first step
    assert stop_reason(engine) == STOP_TIME and engine.state.iteration == 0
    state = handler.state_dict()
    fresh = attach_time_limit(Engine(lambda e, b: None), 3600)
    fresh.load_state_dict(state)
    assert fresh.elapsed == pytest.approx(state["elapsed"])


def test_limit_arguments_are_checked():
    engine = Engine(lambda e, b: None)
    with pytest.raises(ValueError, match="seconds=0 is not allowed"):
        attach_time_limit(engine, 0)
    with pytest.raises(ValueError, match="seconds=True is not allowed"):
        attach_time_limit(engine, True)
    with pytest.raises(ValueError, match="max_steps=0 is not allowed"):
        attach_max_steps(engine, 0)
    with pytest.raises(ValueError, match="accumulation_steps=1.5 is not allowed"):
        attach_max_steps(engine, 3, accumulation_steps=1.5)
