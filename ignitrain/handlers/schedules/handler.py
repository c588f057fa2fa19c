"""The Ignite side: :func:`attach_schedule` wires a :class:`Schedule` to engine events,
:class:`LRWriterGuard` refuses a second writer of a scheduled value.

Why a handler of our own instead of attaching the Ignite scheduler itself: the schedule
advances once per *optimizer step* (under gradient accumulation, at the first
micro-batch of each group; Ignite's schedulers step per event), an epoch schedule
advances at the first iteration of the next epoch (which also holds after a resume at an
epoch end, where Ignite does not fire ``EPOCH_COMPLETED`` again), and a metric schedule
advances once per training iteration count with the evaluator's metric.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers.param_scheduler import ParamGroupScheduler, ParamScheduler

from ignitrain.errors import not_allowed, suggest
from ignitrain.handlers.schedules.build import check_int
from ignitrain.handlers.schedules.drivers import scheduler_param_names
from ignitrain.handlers.schedules.schedule import Schedule
from ignitrain.handlers.stop_limits import optimizer_steps

__all__ = [
    "LRWriterGuard",
    "ScheduleHandler",
    "attach_lr_writer_guard",
    "attach_schedule",
]


class ScheduleHandler:
    """The Ignite adapter of a :class:`Schedule` (see :func:`attach_schedule`).

    ``state_dict``/``load_state_dict`` delegate to the schedule, so either object can
    go into a checkpoint; ``remove()`` detaches every event handler.
    """

    def __init__(
        self,
        engine: Engine,
        schedule: Schedule,
        evaluator: Engine | None,
        metric,
        accumulation_steps: int = 1,
    ):
        self.engine = engine
        self.schedule = schedule
        self.metric = metric
        self.accumulation_steps = accumulation_steps
        self._warned = False
        self._handles = [engine.add_event_handler(Events.ITERATION_STARTED, self._iteration)]
        if schedule.unit == "metric":
            self._handles.append(evaluator.add_event_handler(Events.COMPLETED, self._evaluated))

    def _iteration(self, engine: Engine) -> None:
        state, k = engine.state, self.accumulation_steps
        position = state.iteration - 1  # micro-batches before this one in the epoch
        if state.epoch_length:
            position %= state.epoch_length
        if position % k:
            # Not the first micro-batch of an accumulation group: the group's value was
            # written at its first micro-batch; a schedule counts optimizer steps.
            return
        done = optimizer_steps(state.iteration - 1, state.epoch_length, k)
        # Catch a resume that restored the engine but not the schedule.
        if not self._warned and done != self.schedule.iterations:
            self._warned = True
            warnings.warn(
                f"Schedule {self.schedule.name!r} has seen {self.schedule.iterations} optimizer "
                f"steps but the engine is at step {done}: restore the "
                "schedule's state_dict together with the engine's on resume",
                stacklevel=2,
            )
        self.schedule.iteration_started(state.epoch)

    def _evaluated(self, evaluator: Engine) -> None:
        metrics = evaluator.state.metrics
        if self.metric not in metrics:
            raise KeyError(
                f"Schedule {self.schedule.name!r} watches metric {self.metric!r}, which the "
                f"evaluator did not compute.{suggest(self.metric, list(metrics))} "
                f"Computed metrics: {', '.join(sorted(metrics)) or 'none'}"
            )
        self.schedule.metric_completed(
            metrics[self.metric], engine=evaluator, step=self.engine.state.iteration
        )

    def remove(self) -> None:
        """Detach the schedule from its engines."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def state_dict(self) -> dict[str, Any]:
        """The schedule's state."""
        return self.schedule.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the schedule's state."""
        self.schedule.load_state_dict(state)


def attach_schedule(
    engine: Engine,
    schedule: Schedule,
    *,
    evaluator: Engine | None = None,
    metric: str | None = None,
    mode: str | None = None,
    accumulation_steps: int = 1,
) -> ScheduleHandler:
    """Attach ``schedule`` to ``engine`` at the events of its unit.

    * every ``ITERATION_STARTED``: write the current value (warm-up included); an
      iteration schedule advances here, so iteration 1 trains with step 0's value; an
      epoch schedule advances at the first iteration of each new epoch;
    * ``evaluator``'s ``COMPLETED`` (metric unit): advance with
      ``evaluator.state.metrics[metric]``.

    Args:
        engine: The training engine.
        schedule: From :func:`build_schedule`.
        evaluator: Validation engine; required for a metric schedule (``plateau``),
            ignored otherwise.
        metric: Name of the metric driving a metric schedule.
        mode: ``"min"``/``"max"`` for a metric schedule; ``None`` keeps the mode of the
            spec or infers it from the metric name (``"loss"`` -> min).
        accumulation_steps: Micro-batches (engine iterations) per optimizer step: an
            iteration schedule and the warm-up advance once per optimizer step.

    Returns:
        The :class:`ScheduleHandler` (holds the schedule; ``remove()`` detaches it).
    """
    accumulation_steps = check_int(accumulation_steps, "accumulation_steps", 1)
    if not isinstance(engine, Engine):
        raise not_allowed("Argument engine", engine, "expected an ignite Engine", TypeError)
    if not isinstance(schedule, Schedule):
        why = "expected a Schedule from build_schedule"
        raise not_allowed("Argument schedule", schedule, why, TypeError)
    if schedule.unit == "metric":
        if not isinstance(evaluator, Engine) or not isinstance(metric, str):
            raise ValueError(
                f"Schedule {schedule.name!r} steps on a validation metric: pass evaluator=<Engine> "
                f"and metric=<name> (got evaluator={evaluator!r}, metric={metric!r})"
            )
        schedule.configure_metric(metric, mode)
    return ScheduleHandler(engine, schedule, evaluator, metric, accumulation_steps)


class LRWriterGuard:
    """Refuses, when the run starts, a second writer of a value ignitrain schedules.

    Checked at ``STARTED`` (after the user attached their own handlers):

    * Ignite's ``FastaiLRFinder`` attached to the training engine: it would sweep the
      LR on the real run -- ignitrain's schedule rewrites the LR every iteration (the
      finder logs a ramp the optimizer never sees), the run's checkpoints, History and
      "latest" pointer record the sweep, and the schedule ends up ahead. Refused: use
      ``trainer.find_lr()`` / ``ignitrain lr-find``, which run it on a private engine.
    * An Ignite ``ParamScheduler`` (``LRScheduler``, ``CosineAnnealingScheduler``,
      ``ConcatScheduler``, ``ParamGroupScheduler``...) writing the same parameter of the
      same optimizer as an ignitrain schedule: the two would overwrite each other
      every iteration. Refused: pass it as ``TrainConfig(lr_scheduler=<it>)`` (or
      ``momentum_scheduler=``), which drives and checkpoints it, or drop the config's
      schedule. Without an ignitrain schedule a user's ``ParamScheduler`` just works.

    Ignite offers no public listing of an engine's handlers; the check reads
    ``engine._event_handlers`` once per run.
    """

    def __init__(self, engine: Engine, guarded: list[tuple[Any, str]]) -> None:
        self.engine = engine
        self.guarded = list(guarded)
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        for event, handler in _registered(engine):
            owner = getattr(handler, "__self__", handler)
            if type(owner).__name__ == "FastaiLRFinder":
                raise RuntimeError(
                    "Ignite's FastaiLRFinder is attached to the training engine of an "
                    "ignitrain run: its LR sweep would be overwritten by the run's schedule "
                    "and written into the run's checkpoints and history. Use "
                    "trainer.find_lr() (or `ignitrain lr-find`), which runs FastaiLRFinder on "
                    "a private engine and restores everything"
                )
            for optimizer, param in self.guarded:
                if _writes(owner, optimizer, param):
                    option = "lr_scheduler" if param == "lr" else "momentum_scheduler"
                    raise RuntimeError(
                        f"{type(owner).__name__} attached to the training engine ({event}) "
                        f"writes {param!r} of the optimizer that ignitrain's {option} already "
                        f"schedules: they would overwrite each other every iteration. Pass "
                        f"it as TrainConfig({option}=<the scheduler>) instead, or set "
                        f"{option}=None"
                    )


def _registered(engine: Engine):
    for event, entries in engine._event_handlers.items():
        for handler, _, _ in entries:
            parent = getattr(handler, "_parent", None)  # Ignite's filtered-event wrapper
            yield event, (parent() if parent is not None else handler)


def _writes(scheduler: Any, optimizer: Any, param: str) -> bool:
    if isinstance(scheduler, ParamGroupScheduler):
        return any(_writes(s, optimizer, param) for s in scheduler.schedulers)
    if not isinstance(scheduler, ParamScheduler):
        return False
    names = scheduler_param_names(scheduler)
    return getattr(scheduler, "optimizer", None) is optimizer and param in names


def attach_lr_writer_guard(engine: Engine, guarded: list[tuple[Any, str]]) -> LRWriterGuard:
    """Attach :class:`LRWriterGuard` for ``(optimizer, "lr"|"momentum")`` pairs.

    Attached even without schedules: ``FastaiLRFinder`` on the run's engine is refused.
    """
    return LRWriterGuard(engine, guarded)
