"""Stop rules decided on validation metrics: early stopping and ``stop_when`` targets.

* Early stopping is Ignite's ``EarlyStopping`` (:class:`EarlyStoppingHandler`, a
  subclass adding a NaN-safe score -- Ignite takes a NaN as an improvement and resets
  the patience counter -- and one decision per training iteration); its ``state_dict``
  goes into checkpoints, so a resumed run keeps its patience counter.
* ``stop_when`` targets: a plain decision object (:class:`TargetChecker`) and a thin
  adapter on the evaluator (Ignite has no such handler).

Both listen to the evaluator's ``COMPLETED``, never to the order of the trainer's
handlers. Under several processes, evaluation metrics are reduced over all ranks, so
every rank takes the same decision.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping

from ignitrain.errors import is_number, suggest
from ignitrain.handlers.modes import is_reached, resolve_mode
from ignitrain.handlers.stop_reasons import (
    STOP_EARLY,
    STOP_TARGET,
    _Attached,
    check_engine,
    check_number,
    record_stop_reasons,
    stop,
)

__all__ = [
    "EarlyStoppingHandler",
    "StopWhenHandler",
    "TargetChecker",
    "attach_early_stopping",
    "attach_stop_when",
]

logger = logging.getLogger("ignitrain.handlers.stopping")


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


class _OnEvaluator(_Attached):
    """Glue shared by the rules: called at the evaluator's ``COMPLETED``, once per
    training iteration, and detached by :meth:`remove`."""

    def _listen(self, trainer: Engine, evaluator: Engine) -> None:
        record_stop_reasons(trainer)
        self.last_iteration: int | None = None
        self._on(evaluator, Events.COMPLETED, self)

    def _new_evaluation(self, trainer: Engine) -> bool:
        # A run of the evaluator outside training (a final test, ``trainer.evaluate``)
        # happens while the training engine stays at the same iteration: it does not
        # count. An evaluator reused on several data sets is split with
        # ignitrain.stack.SplitView.
        if trainer.state.iteration == self.last_iteration:
            return False
        self.last_iteration = trainer.state.iteration
        return True


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
            if not isinstance(name, str) or not is_number(target):
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


class EarlyStoppingHandler(_OnEvaluator, EarlyStopping):
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
        check_engine("engine", trainer)
        check_engine("evaluator", evaluator)
        check_number("patience", patience, minimum=1, integer=True)
        check_number("min_delta", min_delta, minimum=0.0)
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
        self._listen(trainer, evaluator)

    @property
    def best(self) -> float | None:
        """The best metric value seen (``None`` before the first validation)."""
        return None if self.best_score is None else float(self.best_score)

    def __call__(self, evaluator: Engine) -> None:
        if not self._new_evaluation(self.trainer):
            return
        super().__call__(evaluator)
        if self.counter >= self.patience:
            logger.info(
                "Stopping training at epoch %d: %s did not improve on %s for %d evaluations",
                self.trainer.state.epoch,
                self.metric,
                self.best,
                self.counter,
            )

    def state_dict(self) -> OrderedDict:
        """Ignite's ``counter``/``best_score`` plus the last evaluated iteration."""
        state = super().state_dict()
        state["last_iteration"] = self.last_iteration
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore Ignite's state and the last evaluated iteration."""
        super().load_state_dict(state_dict)
        self.last_iteration = state_dict.get("last_iteration")


class StopWhenHandler(_OnEvaluator):
    """Adapter of :class:`TargetChecker` to an evaluator (see :func:`attach_stop_when`).

    Decides after each validation run (``COMPLETED``), once per training iteration
    count: a run of the evaluator after training does not count.
    """

    stop_reason = STOP_TARGET  # read by record_stop_reasons when this calls terminate()

    def __init__(self, engine: Engine, evaluator: Engine, checker: TargetChecker):
        check_engine("engine", engine)
        check_engine("evaluator", evaluator)
        self.engine = engine
        self.checker = checker
        self._listen(engine, evaluator)

    def __call__(self, evaluator: Engine) -> None:
        if self._new_evaluation(self.engine) and self.checker.update(evaluator.state.metrics):
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
