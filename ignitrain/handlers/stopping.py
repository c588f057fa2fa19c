"""Stopping rules: early stopping, metric targets, a time limit and a step limit.

* Early stopping is Ignite's ``EarlyStopping`` (:class:`EarlyStoppingHandler`, a
  subclass adding a NaN-safe score -- Ignite takes a NaN as an improvement and resets
  the patience counter -- and validation-run filtering); its ``state_dict`` goes into
  checkpoints, so a resumed run keeps its patience counter.
* ``stop_when`` targets: a plain decision object (:class:`TargetChecker`) and a thin
  adapter on the evaluator (Ignite has no such handler).
* A time limit and a step limit: small custom handlers (see :class:`TimeLimitHandler`
  for why Ignite's ``TimeLimit`` does not serve; ``max_steps`` must stop mid-epoch and
  at the start of a resumed, finished run, which ``Engine.run(max_iters=...)`` cannot
  combine with ``max_epochs``).

Every stop is recorded. :func:`record_stop_reasons` (called by every attach function
here, and by the flavors and :func:`ignitrain.attach`) declares
``engine.state.stop_reason``: ``None`` while nothing stopped the run, else the first
reason given -- one of the ``STOP_*`` strings below for the rules of this module, the
class or function name of whatever else called ``engine.terminate()`` (Ignite's
``EarlyStopping``, ``TerminateOnNan``, ``TimeLimit``, a user's handler). A Trainer also
keeps it in ``history.meta["stop_reason"]`` (``"completed"`` when nothing stopped it).
Read it with :func:`stop_reason`. The attach functions work on any Ignite ``Engine``::

    trainer = Engine(update)            # any engine
    evaluator = Engine(evaluate)        # with metrics attached
    attach_early_stopping(trainer, evaluator, "accuracy", patience=3)
    attach_stop_when(trainer, evaluator, {"accuracy": 0.98})
    attach_time_limit(trainer, 3600)
    attach_max_steps(trainer, 10_000)   # optimizer steps (engine iterations)

Under several processes, evaluation metrics are reduced over all ranks, so every rank
takes the same early-stopping and target decision. Clocks differ between ranks, so the
time limit is agreed with :func:`agree_any` (a MAX all-reduce of the flag) at every
iteration; a NaN loss is agreed the same way by the training step.

One concept per module, every name importable from here as before:
:mod:`~ignitrain.handlers.stop_reasons` (the ``STOP_*`` reasons, :func:`stop`,
recording), :mod:`~ignitrain.handlers.metric_stopping` (early stopping, targets) and
:mod:`~ignitrain.handlers.stop_limits` (time and step limits).
"""

from __future__ import annotations

from ignitrain.distributed import agree_any
from ignitrain.handlers.metric_stopping import (
    EarlyStoppingHandler,
    StopWhenHandler,
    TargetChecker,
    attach_early_stopping,
    attach_stop_when,
)
from ignitrain.handlers.stop_limits import (
    MaxStepsHandler,
    TimeLimitHandler,
    attach_max_steps,
    attach_time_limit,
    optimizer_steps,
)
from ignitrain.handlers.stop_reasons import (
    STATE_ATTRIBUTE,
    STOP_EARLY,
    STOP_MAX_STEPS,
    STOP_NAN,
    STOP_REASONS,
    STOP_SIGNAL,
    STOP_TARGET,
    STOP_TIME,
    record_stop_reasons,
    stop,
    stop_reason,
)

__all__ = [
    "STOP_EARLY",
    "STOP_TARGET",
    "STOP_NAN",
    "STOP_TIME",
    "STOP_MAX_STEPS",
    "STOP_SIGNAL",
    "STOP_REASONS",
    "STATE_ATTRIBUTE",
    "TargetChecker",
    "record_stop_reasons",
    "stop",
    "stop_reason",
    "agree_any",
    "EarlyStoppingHandler",
    "StopWhenHandler",
    "TimeLimitHandler",
    "MaxStepsHandler",
    "optimizer_steps",
    "attach_early_stopping",
    "attach_stop_when",
    "attach_time_limit",
    "attach_max_steps",
]
