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
"""

from __future__ import annotations

import logging
import math
import numbers
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping

from ignitrain.config import suggest
from ignitrain.distributed import agree_any
from ignitrain.handlers.modes import is_reached, resolve_mode

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

logger = logging.getLogger(__name__)

#: The validation metric stopped improving for ``patience`` evaluations.
STOP_EARLY = "early_stopping"
#: Every ``stop_when`` target was reached.
STOP_TARGET = "target_reached"
#: The loss was NaN or infinite (decided by the training step, before the update).
STOP_NAN = "non_finite_loss"
#: The time limit was reached.
STOP_TIME = "time_limit"
#: ``max_steps`` iterations were done.
STOP_MAX_STEPS = "max_steps"
#: The process received SIGINT/SIGTERM and stopped cleanly.
STOP_SIGNAL = "signal"
#: All reasons above.
STOP_REASONS: tuple[str, ...] = (
    STOP_EARLY,
    STOP_TARGET,
    STOP_NAN,
    STOP_TIME,
    STOP_MAX_STEPS,
    STOP_SIGNAL,
)


# -- validation helpers --------------------------------------------------------------


def _check_engine(name: str, engine: Any) -> None:
    if not isinstance(engine, Engine):
        raise TypeError(f"Argument {name}={engine!r} is not allowed: expected an ignite Engine")


def _check_number(name: str, value: Any, *, minimum: float, integer: bool = False) -> None:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not value >= minimum:
        what = "an integer" if integer else "a number"
        raise ValueError(f"Argument {name}={value!r} is not allowed: expected {what} >= {minimum}")


def _metric_value(evaluator: Engine, metric: str, *, purpose: str) -> float:
    metrics = evaluator.state.metrics
    if metric not in metrics:
        raise _missing_metric(metric, metrics, purpose)
    return float(metrics[metric])


def _missing_metric(metric: str, metrics: Mapping[str, Any], purpose: str) -> KeyError:
    computed = ", ".join(sorted(metrics)) or "none"
    return KeyError(
        f"{purpose} watches metric {metric!r}, which the evaluator did not compute."
        f"{suggest(metric, list(metrics))} Computed metrics: {computed}"
    )


# -- decision objects --------------------------------------------------------------


class TargetChecker:
    """Decides when every metric reached its target.

    Metrics whose name is minimised by :func:`~ignitrain.handlers.modes.infer_mode`
    (``"loss"``, ``"error"``, ``"mae"``...) reach their target at ``value <= target``,
    all others at ``value >= target``. ``modes`` overrides that per metric.

    Args:
        targets: Metric name -> target value, e.g. ``{"accuracy": 0.99}``.
        modes: Optional metric name -> ``"min"``/``"max"``.

    Example:
        >>> checker = TargetChecker({"accuracy": 0.9, "loss": 0.2})
        >>> checker.update({"accuracy": 0.95, "loss": 0.3})
        False
        >>> checker.update({"accuracy": 0.95, "loss": 0.1})
        True
    """

    def __init__(self, targets: Mapping[str, float], modes: Mapping[str, str] | None = None):
        if not isinstance(targets, Mapping) or not targets:
            raise TypeError(
                f"Argument targets={targets!r} is not allowed: expected a non-empty mapping "
                "metric -> target, e.g. {'accuracy': 0.99}"
            )
        for name, target in targets.items():
            if (
                not isinstance(name, str)
                or isinstance(target, bool)
                or not isinstance(target, numbers.Real)
            ):
                raise TypeError(
                    f"Argument targets={dict(targets)!r} is not allowed: expected metric names "
                    "mapped to numbers"
                )
        modes = dict(modes or {})
        unknown = set(modes) - set(targets)
        if unknown:
            raise ValueError(f"Argument modes names metrics without a target: {sorted(unknown)}")
        self.targets = {name: float(t) for name, t in targets.items()}
        self.modes = {name: resolve_mode(name, modes.get(name)) for name in self.targets}
        self.reached = False

    def status(self, metrics: Mapping[str, float]) -> dict[str, bool]:
        """Metric name -> whether it reached its target in ``metrics``.

        Raises:
            KeyError: A target metric is missing from ``metrics``.
        """
        missing = [name for name in self.targets if name not in metrics]
        if missing:
            raise _missing_metric(missing[0], metrics, "stop_when")
        return {
            name: is_reached(metrics[name], target, self.modes[name])
            for name, target in self.targets.items()
        }

    def update(self, metrics: Mapping[str, float]) -> bool:
        """``True`` when every target is reached in this one set of ``metrics``."""
        self.reached = all(self.status(metrics).values())
        return self.reached

    def state_dict(self) -> dict[str, Any]:
        """Whether the targets were reached at the last update."""
        return {"reached": self.reached}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the ``reached`` flag."""
        self.reached = bool(state["reached"])


# -- stopping an engine and recording why ------------------------------------------

#: The ``engine.state`` attribute holding the stop reason (see :func:`record_stop_reasons`).
STATE_ATTRIBUTE = "stop_reason"


def record_stop_reasons(engine: Engine) -> None:
    """Make every ``engine.terminate()`` leave a reason in ``engine.state.stop_reason``.

    ``stop_reason`` is an attribute ignitrain declares on the engine's state: it is set
    to ``None`` when this is called and at every ``STARTED`` (registered here, so before
    the stopping rules attached afterwards), and to the first reason given while the
    run stops. A rule of this module gives its ``STOP_*`` string; code that sets
    ``engine.state.stop_reason`` itself before ``terminate()`` keeps its own (the
    training step's ``"non_finite_loss"``); any other caller of ``terminate()`` --
    Ignite's ``EarlyStopping``, ``TerminateOnNan``, ``TimeLimit``, a user's handler --
    is recorded by its ``stop_reason`` attribute if it has one, else its class name
    (``"TerminateOnNan"``), else its function name. Calling it again does nothing.

    Ignite's ``terminate()`` records no caller, so the engine's ``terminate`` is wrapped
    (an instance attribute calling the class's method): the only way to name the
    handler that stopped the run, which Ignite's handlers do not report otherwise.
    """
    _check_engine("engine", engine)
    if getattr(engine.terminate, "_ignitrain_records", False):
        return
    original = engine.terminate

    def terminate(*args: Any, **kwargs: Any) -> None:
        if stop_reason(engine) is None and not engine.should_terminate:
            setattr(engine.state, STATE_ATTRIBUTE, _caller_name(sys._getframe(1), engine))
        original(*args, **kwargs)

    terminate._ignitrain_records = True  # type: ignore[attr-defined]
    engine.terminate = terminate  # type: ignore[method-assign]
    setattr(engine.state, STATE_ATTRIBUTE, None)
    engine.add_event_handler(Events.STARTED, _clear_reason)


def _clear_reason(engine: Engine) -> None:
    setattr(engine.state, STATE_ATTRIBUTE, None)


def _caller_name(frame: Any, engine: Engine) -> str:
    owner = frame.f_locals.get("self")
    if owner is not None and owner is not engine:
        return getattr(owner, "stop_reason", None) or type(owner).__name__
    return frame.f_code.co_name


def stop(engine: Engine, reason: str, detail: str = "") -> None:
    """Stop ``engine`` and record why in ``engine.state.stop_reason``.

    The first reason given while the engine is terminating wins: when early stopping
    and a target fire at the same evaluation, the rule attached first is recorded and
    the other is only logged.

    Args:
        engine: The training engine.
        reason: One of the ``STOP_*`` strings (any string is accepted).
        detail: Human-readable context for the log line.
    """
    _check_engine("engine", engine)
    if not isinstance(reason, str) or not reason:
        raise TypeError(f"Argument reason={reason!r} is not allowed: expected a non-empty string")
    state = engine.state
    message = f"Stopping training at epoch {state.epoch}, iteration {state.iteration}: {reason}"
    if detail:
        message += f" ({detail})"
    if engine.should_terminate and stop_reason(engine) is not None:
        logger.info("%s; already stopping for %s", message, stop_reason(engine))
        return
    setattr(engine.state, STATE_ATTRIBUTE, reason)
    logger.info(message)
    engine.terminate()


def stop_reason(engine: Engine) -> str | None:
    """Why ``engine`` stopped (see :func:`record_stop_reasons`), or ``None``."""
    return getattr(engine.state, STATE_ATTRIBUTE, None)


class _Attached:
    """An Ignite adapter: keeps its event handles so ``remove()`` detaches it."""

    def __init__(self) -> None:
        self._handles: list[Any] = []

    def remove(self) -> None:
        """Detach every handler this adapter added."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _is_new_evaluation(trainer: Engine, last: int | None) -> bool:
    # A run of the evaluator outside training (a final test, ``trainer.evaluate``)
    # happens while the training engine stays at the same iteration: it does not count.
    # An evaluator reused on several data sets is split with ignitrain.stack.SplitView.
    return trainer.state.iteration != last


class _EvaluationRule(_Attached):
    """Calls ``_decide`` after each validation run, once per training iteration count."""

    def __init__(self, engine: Engine, evaluator: Engine) -> None:
        super().__init__()
        _check_engine("engine", engine)
        _check_engine("evaluator", evaluator)
        record_stop_reasons(engine)
        self.engine = engine
        self.last_iteration: int | None = None
        self._handles.append(evaluator.add_event_handler(Events.COMPLETED, self))

    def __call__(self, evaluator: Engine) -> None:
        if not _is_new_evaluation(self.engine, self.last_iteration):
            return
        self.last_iteration = self.engine.state.iteration
        self._decide(evaluator)

    def _decide(self, evaluator: Engine) -> None:
        raise NotImplementedError


class EarlyStoppingHandler(EarlyStopping):
    """Ignite's ``EarlyStopping`` with a NaN-safe score, resumable and split-aware.

    Ignite decides (``patience``, ``threshold`` = ``min_delta``, ``mode``,
    ``cumulative=True`` so the best score only moves on a real improvement) and calls
    ``trainer.terminate()``; this subclass adds three things Ignite lacks:

    * NaN-safe score: Ignite's comparison ``score <= best + threshold`` is ``False``
      for a NaN, so a NaN counts as an improvement, resets the patience counter and
      becomes the best score (no later score then compares as worse: training never
      stops). A NaN is turned into the worst score (``-inf`` for max, ``+inf`` for min).
    * One decision per training iteration: a test run after training does not count.
    * ``state_dict`` also holds the last evaluated training iteration.

    Attributes:
        metric: The watched metric.
        counter: Evaluations without improvement (Ignite's).
        best: The best metric value so far (``best_score``), ``None`` before any.
    """

    stop_reason = STOP_EARLY  # read by record_stop_reasons when this calls terminate()

    def __init__(
        self,
        trainer: Engine,
        evaluator: Engine,
        metric: str,
        *,
        patience: int,
        min_delta: float = 0.0,
        mode: str = "max",
    ) -> None:
        _check_engine("engine", trainer)
        _check_engine("evaluator", evaluator)
        _check_number("patience", patience, minimum=1, integer=True)
        _check_number("min_delta", min_delta, minimum=0.0)
        record_stop_reasons(trainer)
        worst = -math.inf if mode == "max" else math.inf

        def score(engine: Engine) -> float:
            value = _metric_value(engine, metric, purpose="Early stopping")
            return worst if math.isnan(value) else value

        super().__init__(
            int(patience),
            score,
            trainer,
            threshold=float(min_delta),
            cumulative=True,
            threshold_mode="abs",
            mode=mode,
        )
        self.metric = metric
        self.last_iteration: int | None = None
        self._handle = evaluator.add_event_handler(Events.COMPLETED, self)

    @property
    def best(self) -> float | None:
        """The best metric value seen (``None`` before the first validation)."""
        return None if self.best_score is None else float(self.best_score)

    def __call__(self, evaluator: Engine) -> None:
        if not _is_new_evaluation(self.trainer, self.last_iteration):
            return
        self.last_iteration = self.trainer.state.iteration
        super().__call__(evaluator)
        if self.counter >= self.patience:
            logger.info(
                "Stopping training at epoch %d: %s did not improve on %s for %d evaluations",
                self.trainer.state.epoch,
                self.metric,
                self.best,
                self.counter,
            )

    def remove(self) -> None:
        """Detach from the evaluator."""
        self._handle.remove()

    def state_dict(self) -> OrderedDict:
        """Ignite's ``counter``/``best_score`` plus the last evaluated iteration."""
        state = super().state_dict()
        state["last_iteration"] = self.last_iteration
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore Ignite's state and the last evaluated iteration."""
        super().load_state_dict(state_dict)
        self.last_iteration = state_dict.get("last_iteration")


class StopWhenHandler(_EvaluationRule):
    """Adapter of :class:`TargetChecker` to an evaluator (see :func:`attach_stop_when`)."""

    stop_reason = STOP_TARGET

    def __init__(self, engine: Engine, evaluator: Engine, checker: TargetChecker):
        super().__init__(engine, evaluator)
        self.checker = checker

    def _decide(self, evaluator: Engine) -> None:
        if self.checker.update(evaluator.state.metrics):
            detail = ", ".join(
                f"{name}={float(evaluator.state.metrics[name]):.6g} (target {target:g})"
                for name, target in self.checker.targets.items()
            )
            stop(self.engine, STOP_TARGET, detail)

    def state_dict(self) -> dict[str, Any]:
        """The checker's state and the last training iteration evaluated."""
        return {"checker": self.checker.state_dict(), "last_iteration": self.last_iteration}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the checker and the last evaluated iteration."""
        self.checker.load_state_dict(state["checker"])
        self.last_iteration = state["last_iteration"]


class TimeLimitHandler(_Attached):
    """Stops training after ``seconds`` of accumulated run time (see :func:`attach_time_limit`).

    Time is accumulated while the engine runs (from each ``STARTED`` on, handlers and
    validation included) and kept in ``state_dict``, so a resumed run counts the time
    the killed run already spent; time between runs does not count.

    Kept custom: Ignite's ``TimeLimit`` starts its clock when it is *constructed*
    (time spent building the model counts, a resumed run starts from zero), has no
    ``state_dict``, takes whole seconds only and decides per rank (under several
    processes one rank stops while the others wait in a collective).
    """

    stop_reason = STOP_TIME

    def __init__(self, engine: Engine, seconds: float):
        super().__init__()
        _check_engine("engine", engine)
        if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not seconds > 0:
            raise ValueError(f"Argument seconds={seconds!r} is not allowed: expected a number > 0")
        record_stop_reasons(engine)
        self.engine = engine
        self.seconds = float(seconds)
        self.elapsed = 0.0
        self._last: float | None = None
        self._handles.append(engine.add_event_handler(Events.STARTED, self._started))
        self._handles.append(engine.add_event_handler(Events.ITERATION_COMPLETED, self._check))

    def _started(self, engine: Engine) -> None:
        self._last = time.monotonic()
        self._check(engine)

    def _check(self, engine: Engine) -> None:
        now = time.monotonic()
        if self._last is not None:
            self.elapsed += now - self._last
        self._last = now
        # Every rank runs this at the same iteration; one rank over the limit stops all.
        if agree_any(self.elapsed >= self.seconds):
            stop(engine, STOP_TIME, f"{self.elapsed:.1f} s >= limit {self.seconds:g} s")

    def state_dict(self) -> dict[str, Any]:
        """Seconds of run time accumulated so far."""
        return {"elapsed": self.elapsed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the accumulated run time."""
        self.elapsed = float(state["elapsed"])


def optimizer_steps(iteration: int, epoch_length: int | None, accumulation_steps: int = 1) -> int:
    """Optimizer steps done after ``iteration`` micro-batches (engine iterations).

    Accumulation groups never cross an epoch end (as in ``OptimizerStep``): an epoch of
    ``L`` micro-batches makes ``ceil(L / k)`` steps, the last group possibly shorter.
    """
    k = accumulation_steps
    if k == 1:
        return iteration
    if not epoch_length:
        return iteration // k
    epochs, pos = divmod(iteration, epoch_length)
    return epochs * -(-epoch_length // k) + pos // k


class MaxStepsHandler(_Attached):
    """Stops training once ``max_steps`` optimizer steps are done.

    Without gradient accumulation an optimizer step is an engine iteration; with
    ``accumulation_steps=k`` it is a group of ``k`` micro-batches (see
    :func:`optimizer_steps`).
    """

    stop_reason = STOP_MAX_STEPS

    def __init__(self, engine: Engine, max_steps: int, accumulation_steps: int = 1):
        super().__init__()
        _check_engine("engine", engine)
        _check_number("max_steps", max_steps, minimum=1, integer=True)
        _check_number("accumulation_steps", accumulation_steps, minimum=1, integer=True)
        record_stop_reasons(engine)
        self.max_steps = int(max_steps)
        self.accumulation_steps = int(accumulation_steps)
        # STARTED too: a run resumed at or past the limit stops before another step.
        self._handles.append(engine.add_event_handler(Events.STARTED, self._check))
        self._handles.append(engine.add_event_handler(Events.ITERATION_COMPLETED, self._check))

    def _check(self, engine: Engine) -> None:
        state = engine.state
        done = optimizer_steps(state.iteration, state.epoch_length, self.accumulation_steps)
        if done >= self.max_steps:
            stop(engine, STOP_MAX_STEPS, f"{done} optimizer steps >= {self.max_steps}")


# -- attach functions --------------------------------------------------------------


def attach_early_stopping(
    engine: Engine,
    evaluator: Engine,
    metric: str,
    *,
    patience: int,
    min_delta: float = 0.0,
    mode: str | None = None,
) -> EarlyStoppingHandler:
    """Stop ``engine`` when ``evaluator``'s ``metric`` stops improving (Ignite's ``EarlyStopping``).

    After each validation run of ``evaluator`` (``Events.COMPLETED``) the metric is fed
    to :class:`EarlyStoppingHandler`; after ``patience`` runs without improvement
    ``engine`` stops with reason :data:`STOP_EARLY`.

    Args:
        engine: The training engine to stop.
        evaluator: The validation engine computing ``metric``.
        metric: Name in ``evaluator.state.metrics``.
        patience: Evaluations without improvement before stopping.
        min_delta: Smallest change that counts as an improvement.
        mode: ``"min"``/``"max"``; ``None`` infers it from the name (loss -> min).
            An evaluator that also runs on other data (train, test) in the same
            iteration: pass its validation view (:class:`ignitrain.stack.SplitView`).

    Returns:
        The handler (``counter``, ``best``); its ``state_dict`` goes into checkpoints.
    """
    if not isinstance(metric, str):
        raise TypeError(f"Argument metric={metric!r} is not allowed: expected a metric name")
    return EarlyStoppingHandler(
        engine,
        evaluator,
        metric,
        patience=patience,
        min_delta=min_delta,
        mode=resolve_mode(metric, mode),
    )


def attach_stop_when(
    engine: Engine,
    evaluator: Engine,
    targets: Mapping[str, float],
    *,
    modes: Mapping[str, str] | None = None,
) -> StopWhenHandler:
    """Stop ``engine`` as soon as one ``evaluator`` run reaches every target.

    Args:
        engine: The training engine to stop.
        evaluator: The validation engine computing the metrics.
        targets: Metric -> target, e.g. ``{"accuracy": 0.99}``; direction inferred
            (names with "loss"/"error" must fall to the target, others rise to it).
        modes: Optional per-metric ``"min"``/``"max"`` overriding the inference.

    Returns:
        The handler, with the :class:`TargetChecker` in ``handler.checker``.
    """
    return StopWhenHandler(engine, evaluator, TargetChecker(targets, modes))


def attach_time_limit(engine: Engine, seconds: float) -> TimeLimitHandler:
    """Stop ``engine`` once it has run for ``seconds`` (checked every iteration).

    Elapsed time survives a resume through the handler's ``state_dict``. Under several
    processes the decision is agreed with :func:`agree_any`, so all ranks stop at the
    same iteration.

    Returns:
        The handler (``handler.elapsed`` holds the seconds counted so far).
    """
    return TimeLimitHandler(engine, seconds)


def attach_max_steps(
    engine: Engine, max_steps: int, *, accumulation_steps: int = 1
) -> MaxStepsHandler:
    """Stop ``engine`` after ``max_steps`` optimizer steps (reason ``"max_steps"``).

    ``accumulation_steps``: micro-batches (engine iterations) per optimizer step.
    """
    return MaxStepsHandler(engine, max_steps, accumulation_steps)
