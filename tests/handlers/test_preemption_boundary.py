"""``attach_preemption(boundary=...)``: a stop agreed in the middle of an accumulation
group finishes the group, then saves (what FSDP needs, issue 14)."""

from __future__ import annotations

import os
import signal

import pytest
from ignite.engine import Engine, Events

from ignitrain.handlers.preemption import attach_preemption
from ignitrain.steps import ends_accumulation_group


def _engine(signal_at: int) -> tuple[Engine, list]:
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(
        Events.ITERATION_STARTED(once=signal_at), lambda _: os.kill(os.getpid(), signal.SIGTERM)
    )
    validated: list = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validated.append(e.state.epoch))
    return engine, validated


def _group_end(engine: Engine) -> bool:
    return ends_accumulation_group(engine, 4)


def test_a_signal_mid_group_saves_at_the_groups_last_micro_batch():
    # epoch of 10 iterations, groups of 4: 1-4, 5-8, 9-10
    engine, _ = _engine(6)
    agreed: list[int] = []

    def agree(flag: bool) -> bool:
        agreed.append(engine.state.iteration)
        return flag

    saved: list[int] = []
    handler = attach_preemption(
        engine, lambda: saved.append(engine.state.iteration), agree=agree, boundary=_group_end
    )
    with pytest.raises(SystemExit) as info:
        engine.run(range(10), max_epochs=2)
    assert info.value.code == 128 + signal.SIGTERM
    assert saved == [8] and engine.state.iteration == 8
    # agreed once at iteration 6 (a collective): no rank asks again while it waits
    assert agreed == [1, 2, 3, 4, 5, 6]
    assert handler.exit_code == 143


def test_a_signal_in_an_epochs_short_last_group_saves_after_epoch_completed():
    engine, validated = _engine(9)
    saved: list = []
    attach_preemption(engine, lambda: saved.append(list(validated)), boundary=_group_end)
    with pytest.raises(SystemExit):
        engine.run(range(10), max_epochs=2)
    assert saved == [[1]] and engine.state.iteration == 10


def test_without_boundary_the_save_is_at_the_signalled_iteration():
    engine, _ = _engine(6)
    saved: list[int] = []
    attach_preemption(engine, lambda: saved.append(engine.state.iteration))
    with pytest.raises(SystemExit):
        engine.run(range(10), max_epochs=2)
    assert saved == [6]


def test_boundary_validation():
    with pytest.raises(TypeError, match=r"boundary=4 is not allowed: expected a callable"):
        attach_preemption(Engine(lambda e, b: None), lambda: None, boundary=4)
