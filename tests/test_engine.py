"""LeanEngine: Ignite's Engine without firing events that nothing listens to."""

import logging

import pytest
import torch
from ignite.engine import Engine, EventEnum, Events
from ignite.handlers import HandlersTimeProfiler

import ignitrain
from ignitrain import TrainConfig
from ignitrain.engine import LeanEngine


class _Counted(EventEnum):
    """A custom event whose ``str()`` (what Ignite's debug message formats) is counted."""

    PING = "ping"

    def __str__(self):
        _Counted.formatted = getattr(_Counted, "formatted", 0) + 1
        return super().__str__()


@pytest.mark.parametrize("cls", [Engine, LeanEngine])
def test_an_event_without_handlers_costs_ignite_a_debug_message(cls):
    # Ignite 0.5's defect: _fire_event formats "Firing handlers for event ..." before it
    # looks for handlers, with DEBUG off and nothing listening; LeanEngine does not
    engine = cls(lambda e, b: None)
    engine.register_events(*_Counted)
    _Counted.formatted = 0
    engine.fire_event(_Counted.PING)
    assert engine.last_event_name == _Counted.PING
    assert _Counted.formatted == (1 if cls is Engine else 0)
    # a handler makes the event fire through Ignite's own dispatch, on both
    calls = []
    engine.add_event_handler(_Counted.PING, lambda e, tag: calls.append((e, tag)), "x")
    engine.fire_event(_Counted.PING)
    assert calls == [(engine, "x")]


def _trace(cls, data, epochs=2):
    """Every (event, epoch, iteration) a handler on every event sees, and the outputs."""
    seen = []
    engine = cls(lambda e, b: b * 2)
    for event in (
        Events.STARTED,
        Events.EPOCH_STARTED,
        Events.GET_BATCH_STARTED,
        Events.GET_BATCH_COMPLETED,
        Events.ITERATION_STARTED,
        Events.ITERATION_COMPLETED,
        Events.DATALOADER_STOP_ITERATION,
        Events.EPOCH_COMPLETED,
        Events.COMPLETED,
    ):
        engine.add_event_handler(
            event, lambda e, ev=event: seen.append((ev.name, e.state.epoch, e.state.iteration))
        )
    engine.add_event_handler(
        Events.ITERATION_COMPLETED(every=2), lambda e: seen.append(("every2", e.state.output))
    )
    state = engine.run(data, max_epochs=epochs, epoch_length=3)
    return seen, state.iteration, state.output


def test_every_event_with_a_handler_fires_as_on_ignites_engine():
    # an iterator with epoch_length: Ignite restarts it at DATALOADER_STOP_ITERATION
    assert _trace(LeanEngine, [1, 2, 3, 4]) == _trace(Engine, [1, 2, 3, 4])
    seen, iteration, output = _trace(LeanEngine, [1, 2, 3, 4])
    assert iteration == 6 and output == 4
    assert ("GET_BATCH_STARTED", 1, 0) in seen and ("every2", 4) in seen


def test_a_handler_attached_during_a_run_starts_firing_at_once():
    engine = LeanEngine(lambda e, b: b)
    fetched = []

    @engine.on(Events.ITERATION_COMPLETED(once=2))
    def _listen(e):
        e.add_event_handler(Events.GET_BATCH_COMPLETED, lambda e: fetched.append(e.state.batch))

    engine.run([10, 20, 30, 40], max_epochs=1)
    assert fetched == [30, 40]


def test_with_debug_logging_every_event_goes_through_ignite(caplog):
    engine = LeanEngine(lambda e, b: None)
    with caplog.at_level(logging.DEBUG, logger=engine.logger.name):
        engine.run([0, 1], max_epochs=1)
    fired = [r.getMessage() for r in caplog.records if "Firing handlers" in r.getMessage()]
    assert sum("GET_BATCH_STARTED" in m for m in fired) == 2


def test_the_flavors_build_lean_engines_that_ignites_profiler_times(digits_flat):
    config = TrainConfig(num_epochs=1, batch_size=256, lr=0.05, progress_bar=False)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    trainer = ignitrain.create_classification_trainer(
        model, config, digits_flat.train, digits_flat.val
    )
    assert isinstance(trainer.engine, LeanEngine)
    assert all(isinstance(e, LeanEngine) for e in trainer.evaluators.values())
    # Ignite's HandlersTimeProfiler attaches to every event, GET_BATCH_* included
    profiler = HandlersTimeProfiler()
    profiler.attach(trainer.engine)
    trainer.train()
    results = profiler.get_results()
    # "Dataflow": the time between GET_BATCH_STARTED and GET_BATCH_COMPLETED, summed
    loading = [row for row in results if row[0] == "Dataflow"]
    assert len(loading) == 1 and isinstance(loading[0][2], float) and loading[0][2] > 0.0
