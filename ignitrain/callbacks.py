"""qurious-style ``callbacks=[fn(trainer, epoch, metrics)]`` over Ignite events.

Users of the qurious trainer pass ``callbacks`` to ``train()``: functions called after
every epoch with the trainer, the epoch and that epoch's metrics. Here they are a
``TrainConfig`` option (``callbacks=[fn]``, or import paths in a job file) and
:func:`attach_callbacks` turns them into one plain Ignite handler,
:class:`EpochCallbacks`, on the training engine's ``EPOCH_COMPLETED``, attached after
the History so ``metrics`` holds the epoch's validation results. It is an ordinary
handler: ``trainer.engine.has_event_handler(handler, Events.EPOCH_COMPLETED)`` sees it
and ``remove_event_handler`` removes it. For anything finer, attach your own handler
to any Ignite event instead.

The ``metrics`` a callback receives are the History's names (``"train/loss"``,
``"val/accuracy"``, ``"lr"``) with this epoch's values. The callbacks run on every
process (they may need to, e.g. for a collective); guard rank-0-only work with
``ignite.distributed.get_rank() == 0``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ignite.engine import Engine, Events

from ignitrain.import_paths import resolve_import

__all__ = ["EpochCallbacks", "attach_callbacks", "check_callbacks", "epoch_metrics"]


def check_callbacks(value: Any, *, field: str = "callbacks") -> list:
    """A list of callables or import-path strings (one callable is wrapped in a list).

    Raises:
        TypeError: an entry is neither.
    """
    if value is None:
        return []
    if callable(value) or isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(
            f"{field}={value!r} is not allowed: expected a list of functions "
            "fn(trainer, epoch, metrics) or their import paths"
        )
    for item in value:
        if not (callable(item) or (isinstance(item, str) and "." in item)):
            raise TypeError(
                f"{field} contains {item!r}: expected a function fn(trainer, epoch, metrics) "
                "or its import path 'pkg.module.fn'"
            )
    return list(value)


def _resolve(item: Any) -> Callable:
    if callable(item):
        return item
    fn = resolve_import(item, what="TrainConfig.callbacks")
    if not callable(fn):
        raise TypeError(f"TrainConfig.callbacks: {item!r} is not callable")
    return fn


def epoch_metrics(history: Any, epoch: int) -> dict[str, float]:
    """The History's values logged at ``epoch`` (per-epoch series only)."""
    found = {}
    for name in history.names():
        steps = history.steps(name)
        if steps and steps[-1] == epoch and not name.startswith("train/batch"):
            found[name] = history.latest(name)
    return found


class EpochCallbacks:
    """An Ignite handler calling ``fn(trainer, epoch, metrics)`` for each ``fn``.

    Args:
        trainer: Passed to every callback (the :class:`~ignitrain.Trainer`).
        callbacks: The functions, called in order.
    """

    def __init__(self, trainer: Any, callbacks: list[Callable]) -> None:
        self.trainer = trainer
        self.callbacks = [_resolve(item) for item in check_callbacks(callbacks)]

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        metrics = epoch_metrics(self.trainer.history, epoch)
        for fn in self.callbacks:
            fn(self.trainer, epoch, metrics)


def attach_callbacks(trainer: Any, callbacks: list | None = None) -> EpochCallbacks | None:
    """Attach ``callbacks`` (default: ``trainer.config.callbacks``) at ``EPOCH_COMPLETED``.

    Returns:
        The :class:`EpochCallbacks` handler, or ``None`` when there are no callbacks.
    """
    callbacks = trainer.config.callbacks if callbacks is None else callbacks
    if not callbacks:
        return None
    handler = EpochCallbacks(trainer, callbacks)
    trainer.engine.add_event_handler(Events.EPOCH_COMPLETED, handler)
    return handler
