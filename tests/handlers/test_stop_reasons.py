"""Stop reasons: one source for each, and every terminate() recorded."""

import pytest
from ignite.engine import Engine, Events

from ignitrain import steps
from ignitrain.handlers.stop_reasons import (
    STOP_NAN,
    STOP_REASONS,
    STOP_TIME,
    check_engine,
    check_number,
    record_stop_reasons,
    stop,
    stop_reason,
)


def test_the_nan_reason_is_the_training_steps_own_string():
    assert STOP_NAN is steps.NON_FINITE_LOSS
    assert len(set(STOP_REASONS)) == len(STOP_REASONS)


def test_first_reason_wins_and_a_new_run_clears_it():
    engine = Engine(lambda e, b: None)
    record_stop_reasons(engine)
    record_stop_reasons(engine)  # a second call does nothing

    @engine.on(Events.ITERATION_COMPLETED(once=2))
    def _two_rules(engine):
        stop(engine, STOP_TIME, "first")
        stop(engine, "other")  # already stopping: only logged

    engine.run(range(5), max_epochs=1)
    assert stop_reason(engine) == STOP_TIME and engine.state.iteration == 2
    engine.remove_event_handler(_two_rules, Events.ITERATION_COMPLETED(once=2))
    engine.run(range(5), max_epochs=2)
    assert stop_reason(engine) is None


def test_a_plain_terminate_is_recorded_by_its_callers_name():
    engine = Engine(lambda e, b: None)
    record_stop_reasons(engine)

    def budget_exhausted(engine):
        engine.terminate()

    engine.add_event_handler(Events.ITERATION_COMPLETED(once=3), budget_exhausted)
    engine.run(range(5), max_epochs=1)
    assert stop_reason(engine) == "budget_exhausted"


def test_argument_checks_name_the_argument():
    with pytest.raises(TypeError, match="engine=3 is not allowed"):
        check_engine("engine", 3)
    with pytest.raises(TypeError, match="engine=None is not allowed"):
        record_stop_reasons(None)
    with pytest.raises(ValueError, match="patience=True is not allowed: expected an integer"):
        check_number("patience", True, minimum=1, integer=True)
    with pytest.raises(ValueError, match=r"min_delta=-0.1 is not allowed: expected a number >= 0"):
        check_number("min_delta", -0.1, minimum=0.0)
    check_number("min_delta", 0, minimum=0.0)  # an int is a number
    with pytest.raises(TypeError, match="reason=''"):
        stop(Engine(lambda e, b: None), "")
