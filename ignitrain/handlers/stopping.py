"""Stopping rules: early stopping, metric targets, a time limit and a step limit.

Each rule is split in two, as everywhere in ignitrain:

* a plain decision object with ``state_dict``/``load_state_dict``
  (:class:`EarlyStopChecker`, :class:`TargetChecker`), testable without an engine and
  saved in checkpoints so that a resumed run keeps its patience counter;
* a thin Ignite adapter returned by an ``attach_*`` function, which reads the metric
  from an evaluator and calls :func:`stop`.

Every rule stops the training engine through :func:`stop`, which records why in
``engine.state.stop_reason`` (one of the ``STOP_*`` strings below, ``None`` while
nothing stopped the run), logs it and calls ``engine.terminate()``. Read it with
:func:`stop_reason`. The attach functions work on any Ignite ``Engine``::

    trainer = Engine(update)            # any engine
    evaluator = Engine(evaluate)        # with metrics attached
    attach_early_stopping(trainer, evaluator, "accuracy", patience=3)
    attach_stop_when(trainer, evaluator, {"accuracy": 0.98})
    attach_time_limit(trainer, 3600)
    attach_max_steps(trainer, 10_000)

Under several processes, evaluation metrics are reduced over all ranks, so every rank
takes the same early-stopping and target decision. Clocks differ between ranks, so the
time limit is agreed with :func:`agree_any` (a MAX all-reduce of the flag) at every
iteration; a NaN loss is agreed the same way by the training step.
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine, Events

from ignitrain.config import suggest
from ignitrain.distributed import agree_any
from ignitrain.handlers._modes import is_better, is_reached, resolve_mode

__all__ = [
    "STOP_EARLY",
    "STOP_TARGET",
    "STOP_NAN",
    "STOP_TIME",
    "STOP_MAX_STEPS",
    "STOP_SIGNAL",
    "STOP_REASONS",
    "EarlyStopChecker",
    "TargetChecker",
    "stop",
    "stop_reason",
    "agree_any",
    "EarlyStoppingHandler",
    "StopWhenHandler",
    "TimeLimitHandler",
    "MaxStepsHandler",
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


class EarlyStopChecker:
    """Decides when a metric has stopped improving.

    ``update(score)`` returns ``True`` once ``patience`` consecutive scores failed to
    improve on the best one by more than ``min_delta``. A NaN score counts as no
    improvement. The checker keeps returning ``True`` after that.

    Args:
        patience: Scores without improvement before stopping (>= 1).
        min_delta: Smallest change that counts as an improvement (>= 0).
        mode: ``"max"`` (larger is better) or ``"min"``.

    Example:
        >>> checker = EarlyStopChecker(patience=2, mode="min")
        >>> [checker.update(s) for s in (1.0, 0.9, 0.95, 0.91)]
        [False, False, False, True]
    """

    def __init__(self, patience: int, min_delta: float = 0.0, mode: str = "max"):
        _check_number("patience", patience, minimum=1, integer=True)
        _check_number("min_delta", min_delta, minimum=0.0)
        if mode not in ("min", "max"):
            raise ValueError(
                f"Argument mode={mode!r} is not allowed: expected 'min' or 'max'."
                f"{suggest(mode, ['min', 'max'])}"
            )
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.mode = mode
        self.best: float | None = None
        self.counter = 0

    def update(self, score: float) -> bool:
        """Record one score; ``True`` when training should stop."""
        if is_better(score, self.best, self.mode, self.min_delta):
            self.best = float(score)
            self.counter = 0
        else:
            self.counter += 1
        return self.counter >= self.patience

    @property
    def should_stop(self) -> bool:
        """Whether the last update asked to stop."""
        return self.counter >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """``best`` and ``counter`` (plain Python values, ``weights_only``-loadable)."""
        return {"best": self.best, "counter": self.counter}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``best`` and ``counter``."""
        self.best = None if state["best"] is None else float(state["best"])
        self.counter = int(state["counter"])


class TargetChecker:
    """Decides when every metric reached its target.

    Metrics whose name is minimised by :func:`~ignitrain.handlers._modes.infer_mode`
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


# -- stopping an engine ------------------------------------------------------------


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
    engine.state.stop_reason = reason
    logger.info(message)
    engine.terminate()


def stop_reason(engine: Engine) -> str | None:
    """Why ``engine`` was stopped by :func:`stop`, or ``None``."""
    return getattr(engine.state, "stop_reason", None)


class _Attached:
    """An Ignite adapter: keeps its event handles so ``remove()`` detaches it."""

    def __init__(self) -> None:
        self._handles: list[Any] = []

    def remove(self) -> None:
        """Detach every handler this adapter added."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class _EvaluationRule(_Attached):
    """Calls ``_decide`` after each evaluation, once per training iteration count.

    ``evaluator.run`` outside training (a final test, ``trainer.evaluate``) happens
    while the training engine stays at the same iteration; counting those as new
    validations would feed test scores into the rule, so they are skipped.
    """

    def __init__(self, engine: Engine, evaluator: Engine) -> None:
        super().__init__()
        _check_engine("engine", engine)
        _check_engine("evaluator", evaluator)
        self.engine = engine
        self.last_iteration: int | None = None
        self._handles.append(evaluator.add_event_handler(Events.COMPLETED, self))

    def __call__(self, evaluator: Engine) -> None:
        iteration = self.engine.state.iteration
        if iteration == self.last_iteration:
            return
        self.last_iteration = iteration
        self._decide(evaluator)

    def _decide(self, evaluator: Engine) -> None:
        raise NotImplementedError


class EarlyStoppingHandler(_EvaluationRule):
    """Adapter of :class:`EarlyStopChecker` to an evaluator (see :func:`attach_early_stopping`)."""

    def __init__(self, engine: Engine, evaluator: Engine, metric: str, checker: EarlyStopChecker):
        super().__init__(engine, evaluator)
        self.metric = metric
        self.checker = checker

    def _decide(self, evaluator: Engine) -> None:
        score = _metric_value(evaluator, self.metric, purpose="Early stopping")
        if self.checker.update(score):
            detail = (
                f"{self.metric} did not improve on {self.checker.best} "
                f"for {self.checker.counter} evaluations"
            )
            stop(self.engine, STOP_EARLY, detail)

    def state_dict(self) -> dict[str, Any]:
        """The checker's state and the last training iteration evaluated."""
        return {"checker": self.checker.state_dict(), "last_iteration": self.last_iteration}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the checker and the last evaluated iteration."""
        self.checker.load_state_dict(state["checker"])
        self.last_iteration = state["last_iteration"]


class StopWhenHandler(_EvaluationRule):
    """Adapter of :class:`TargetChecker` to an evaluator (see :func:`attach_stop_when`)."""

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
    """

    def __init__(self, engine: Engine, seconds: float):
        super().__init__()
        _check_engine("engine", engine)
        if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not seconds > 0:
            raise ValueError(f"Argument seconds={seconds!r} is not allowed: expected a number > 0")
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


class MaxStepsHandler(_Attached):
    """Stops training once ``engine.state.iteration`` reaches ``max_steps``."""

    def __init__(self, engine: Engine, max_steps: int):
        super().__init__()
        _check_engine("engine", engine)
        _check_number("max_steps", max_steps, minimum=1, integer=True)
        self.max_steps = int(max_steps)
        # STARTED too: a run resumed at or past the limit stops before another step.
        self._handles.append(engine.add_event_handler(Events.STARTED, self._check))
        self._handles.append(engine.add_event_handler(Events.ITERATION_COMPLETED, self._check))

    def _check(self, engine: Engine) -> None:
        if engine.state.iteration >= self.max_steps:
            stop(engine, STOP_MAX_STEPS, f"iteration {engine.state.iteration} >= {self.max_steps}")


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
    """Stop ``engine`` when ``evaluator``'s ``metric`` stops improving.

    After each ``evaluator`` run (``Events.COMPLETED``) the metric is fed to an
    :class:`EarlyStopChecker`; after ``patience`` runs without improvement
    ``engine`` stops with reason :data:`STOP_EARLY`.

    Args:
        engine: The training engine to stop.
        evaluator: The validation engine computing ``metric``.
        metric: Name in ``evaluator.state.metrics``.
        patience: Evaluations without improvement before stopping.
        min_delta: Smallest change that counts as an improvement.
        mode: ``"min"``/``"max"``; ``None`` infers it from the name (loss -> min).

    Returns:
        The handler; ``handler.checker`` holds the decision state, and the handler's
        ``state_dict`` goes into checkpoints.
    """
    if not isinstance(metric, str):
        raise TypeError(f"Argument metric={metric!r} is not allowed: expected a metric name")
    checker = EarlyStopChecker(patience, min_delta, resolve_mode(metric, mode))
    return EarlyStoppingHandler(engine, evaluator, metric, checker)


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


def attach_max_steps(engine: Engine, max_steps: int) -> MaxStepsHandler:
    """Stop ``engine`` when ``engine.state.iteration == max_steps`` (reason ``"max_steps"``)."""
    return MaxStepsHandler(engine, max_steps)
