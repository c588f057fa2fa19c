"""Checkpointing an Ignite training engine in one call."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from ignite.engine import Engine

from ignitrain.handlers.checkpoint.adapter import CheckpointHandler, CheckpointOptions
from ignitrain.handlers.checkpoint.payload import check_objects
from ignitrain.handlers.checkpoint.store import CheckpointStore

__all__ = ["attach_checkpoints"]


def attach_checkpoints(
    engine: Engine,
    objects: Mapping[str, Any],
    store: CheckpointStore | str | os.PathLike,
    *,
    save_every: int = -1,
    evaluator: Engine | None = None,
    best_metric: str | None = None,
    best_mode: str | None = None,
    save_best: bool = True,
    save_last: bool = True,
    extra_fn: Callable[[], Mapping[str, Any]] | None = None,
    accumulation_steps: int = 1,
    sharded: bool = False,
) -> CheckpointHandler:
    """Save periodic, best and last checkpoints of ``objects`` while ``engine`` trains.

    Works on any Ignite ``Engine`` (e.g. one from ``create_supervised_trainer``): four
    Ignite ``Checkpoint`` objects (``handler.checkpoints``) with a :class:`DurableSaver`.

    Events on ``engine`` (the save points are moved behind every other handler of their
    event at each epoch start, so the attach order does not matter)::

        ITERATION_COMPLETED  periodic when iteration % save_every == 0 -- unless it is the
                             epoch's last iteration: that one is saved at EPOCH_COMPLETED
        EPOCH_COMPLETED      periodic (save_every == -1: every epoch; > 0: deferred ones)
        COMPLETED            last; also after engine.terminate()

    Events on ``evaluator``: ``COMPLETED`` decides the best checkpoint (Ignite's
    ``Checkpoint`` with a NaN-safe score) on the metrics of *that* run and the weights
    it evaluated; the file is written at the training engine's save point that follows
    in the same iteration (one file with the periodic one when both fall there), or at
    once when that save point already passed.

    Args:
        engine: The training engine (any Ignite ``Engine``).
        objects: Name -> object with ``state_dict`` (``"model"``, ``"optimizer"``,
            ``"trainer"`` -> the engine, ``"rng"`` -> :class:`RNGState`...).
        store: Where files go: a :class:`CheckpointStore`, or a directory for one.
        save_every: Optimizer steps between periodic checkpoints (iterations when
            ``accumulation_steps`` is 1); ``-1`` each epoch; ``0`` off. The file is
            named by the iteration that completed the step.
        evaluator: Validation engine whose ``state.metrics`` rank best checkpoints.
        best_metric: Metric ranking best checkpoints (needed with an evaluator and
            ``save_best``). NaN values, and weights holding NaN/Inf, never count as
            best (a warning names the tensors).
        best_mode: ``"min"``/``"max"``; ``None`` infers it (:func:`infer_mode`).
        save_best: Keep the ``store.n_saved`` best checkpoints.
        save_last: Write a ``last`` checkpoint when ``engine`` completes.
        extra_fn: Returns extra metadata at each save (``"config"``,
            ``"model_description"``...).
        accumulation_steps: Micro-batches per optimizer step (``save_every`` counts
            steps: an accumulation group ends at ``k`` micro-batches or the epoch's end).
        sharded: Write each checkpoint as a sharded DCP folder from every rank (FSDP
            models; see :mod:`ignitrain.handlers.sharded_run`). ``store`` must not
            commit in the background then.

    Returns:
        The :class:`CheckpointHandler` (``checkpoints``, ``save_now``, ``detach``,
        ``last_path``).

    Raises:
        TypeError, ValueError: A bad argument, named with what is allowed.

    Example:
        >>> attach_checkpoints(trainer, {"model": net, "optimizer": opt, "trainer": trainer,
        ...                    "rng": RNGState()}, "runs/x/checkpoints", evaluator=evaluator,
        ...                    best_metric="accuracy")  # doctest: +SKIP
    """
    if not isinstance(engine, Engine):
        raise TypeError(f"Argument engine={engine!r} is not allowed: expected an Ignite Engine")
    check_objects(objects, need="state_dict")
    if not objects:
        raise ValueError("Argument objects={} is not allowed: expected at least one object")
    if isinstance(store, (str, os.PathLike)):
        store = CheckpointStore(store)
    if not isinstance(store, CheckpointStore):
        raise TypeError(
            f"Argument store={store!r} is not allowed: expected a CheckpointStore or a directory"
        )
    if evaluator is not None and not isinstance(evaluator, Engine):
        raise TypeError(
            f"Argument evaluator={evaluator!r} is not allowed: expected an Ignite Engine or None"
        )
    if save_best and evaluator is not None and best_metric is None:
        raise ValueError(
            "Argument best_metric=None is not allowed with an evaluator and save_best=True: "
            "name the metric that ranks checkpoints"
        )
    if extra_fn is not None and not callable(extra_fn):
        raise TypeError(f"Argument extra_fn={extra_fn!r} is not allowed: expected a callable")
    if sharded and store.background:  # issue 14: DCP's save is a collective
        raise ValueError(
            "Argument sharded=True is not allowed with a background store: sharded "
            "checkpoints are written on every rank's training thread"
        )
    options = CheckpointOptions(
        save_every=save_every,
        best_metric=best_metric,
        best_mode=best_mode,
        save_best=save_best,
        save_last=save_last,
        accumulation_steps=accumulation_steps,
        sharded=bool(sharded),
    )
    handler = CheckpointHandler(
        engine, objects, store, options, evaluator=evaluator, extra_fn=extra_fn
    )
    return handler.attach()
