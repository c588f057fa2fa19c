"""Rank checkpoints and stop early by a training metric when there is no validation data.

lis2 keeps the checkpoint with the best *training* loss; a run without validation data
had no best checkpoint and no early stopping here. Opt in with
``TrainConfig(best_metric="train/loss")`` (or ``"train_loss"``): :func:`ranking_source`
then gives the best-checkpoint and early-stopping handlers a small Ignite ``Engine``
that "evaluates" once per training epoch by copying the training engine's epoch
metrics (the epoch mean of the loss, reduced over processes). Those handlers listen to
an evaluator's ``COMPLETED``, so they work on it unchanged.
"""

from __future__ import annotations

from ignite.engine import Engine, Events

from ignitrain.metric_names import is_train_metric

__all__ = ["ranking_source", "training_metrics_engine"]


def training_metrics_engine(engine: Engine) -> Engine:
    """An ``Engine`` run (one empty iteration) after each of ``engine``'s epochs, whose
    ``state.metrics`` are ``engine``'s epoch metrics at that point, named ``"train/<name>"``.

    Attach it after the handlers that compute those metrics (the epoch means): Ignite
    runs handlers of one event in the order they were added.
    """
    if not isinstance(engine, Engine):
        raise TypeError(f"Argument engine={engine!r} is not allowed: expected an Ignite Engine")
    source = Engine(lambda _engine, _batch: None)

    def copy_metrics(source_engine: Engine) -> None:
        # "train/loss", not "loss": the best checkpoint's file name then says which loss
        source_engine.state.metrics.update(
            {f"train/{k}": v for k, v in engine.state.metrics.items()}
        )

    source.add_event_handler(Events.EPOCH_COMPLETED, copy_metrics)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: source.run([None], max_epochs=1))
    return source


def ranking_source(
    engine: Engine, val: Engine | None, best_metric: str
) -> tuple[Engine | None, str]:
    """``(engine whose metrics rank, metric name there)`` for a canonical ``best_metric``.

    A validation metric (``"accuracy"``) keeps the validation evaluator; a training
    metric (``"train/loss"``) gets a :func:`training_metrics_engine`, same name.
    """
    if not is_train_metric(best_metric):
        return val, best_metric
    return training_metrics_engine(engine), best_metric
