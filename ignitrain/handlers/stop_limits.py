"""Budgets that stop a run: a time limit and a step limit.

Small custom handlers: Ignite's ``TimeLimit`` does not serve (see
:class:`TimeLimitHandler`), and ``max_steps`` must stop mid-epoch and at the start of
a resumed, finished run, which ``Engine.run(max_iters=...)`` cannot combine with
``max_epochs``. Clocks differ between ranks, so the time limit is agreed with
:func:`~ignitrain.distributed.agree_any` (a MAX all-reduce of the flag).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine, Events

from ignitrain.distributed import agree_any
from ignitrain.errors import is_number
from ignitrain.handlers.stop_reasons import (
    STOP_MAX_STEPS,
    STOP_TIME,
    _Attached,
    check_engine,
    check_number,
    record_stop_reasons,
    stop,
)

__all__ = [
    "MaxStepsHandler",
    "TimeLimitHandler",
    "attach_max_steps",
    "attach_time_limit",
    "optimizer_steps",
]


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
        check_engine("engine", engine)
        if not is_number(seconds) or not seconds > 0:
            raise ValueError(f"Argument seconds={seconds!r} is not allowed: expected a number > 0")
        record_stop_reasons(engine)
        self.engine = engine
        self.seconds = float(seconds)
        self.elapsed = 0.0
        self._last: float | None = None
        self._on(engine, Events.STARTED, self._started)
        self._on(engine, Events.ITERATION_COMPLETED, self._check)

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
        check_engine("engine", engine)
        check_number("max_steps", max_steps, minimum=1, integer=True)
        check_number("accumulation_steps", accumulation_steps, minimum=1, integer=True)
        record_stop_reasons(engine)
        self.max_steps = int(max_steps)
        self.accumulation_steps = int(accumulation_steps)
        # STARTED too: a run resumed at or past the limit stops before another step.
        self._on(engine, Events.STARTED, self._check)
        self._on(engine, Events.ITERATION_COMPLETED, self._check)

    def _check(self, engine: Engine) -> None:
        state = engine.state
        done = optimizer_steps(state.iteration, state.epoch_length, self.accumulation_steps)
        if done >= self.max_steps:
            stop(engine, STOP_MAX_STEPS, f"{done} optimizer steps >= {self.max_steps}")


# -- attach functions --------------------------------------------------------------


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
