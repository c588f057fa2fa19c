"""Early stopping and stop_when on real Ignite engines (an evaluator with a metric)."""

from ignite.engine import Engine, Events
from ignite.metrics import Average

from ignitrain.handlers.metric_stopping import (
    attach_early_stopping,
    attach_stop_when,
)
from ignitrain.handlers.stop_reasons import STOP_TARGET, stop_reason


def _pair(scores):
    """A trainer of 2 iterations per epoch and an evaluator whose ``score`` is
    ``scores[epoch - 1]``, run after each epoch."""
    trainer = Engine(lambda e, b: None)
    evaluator = Engine(lambda e, b: b)
    Average(output_transform=lambda out: out).attach(evaluator, "score")

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(trainer):
        evaluator.run([scores[trainer.state.epoch - 1]], max_epochs=1)

    return trainer, evaluator


# The NaN-safe score, the arguments and a missing metric: tests/handlers/test_stopping.py


def test_an_evaluation_after_training_does_not_count_and_state_round_trips():
    trainer, evaluator = _pair([0.5, 0.4, 0.3])
    handler = attach_early_stopping(trainer, evaluator, "score", patience=3, mode="max")
    trainer.run(range(2), max_epochs=2)
    evaluator.run([0.1], max_epochs=1)  # a test run at the same training iteration
    assert handler.counter == 1
    state = handler.state_dict()
    other = attach_early_stopping(*_pair([0.0]), "score", patience=3, mode="max")
    other.load_state_dict(state)
    assert (other.counter, other.best, other.last_iteration) == (1, 0.5, 4)


def test_stop_when_stops_at_the_first_evaluation_reaching_every_target():
    trainer, evaluator = _pair([0.2, 0.6, 0.9])
    handler = attach_stop_when(trainer, evaluator, {"score": 0.5})
    trainer.run(range(2), max_epochs=3)
    assert trainer.state.epoch == 2 and stop_reason(trainer) == STOP_TARGET
    assert handler.state_dict() == {"checker": {"reached": True}, "last_iteration": 4}
    handler.remove()
    trainer.run(range(2), max_epochs=3)  # detached: the run completes
    assert trainer.state.epoch == 3
