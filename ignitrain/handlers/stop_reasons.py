"""Why a run stopped: the ``STOP_*`` reasons, :func:`stop`, and recording every stop.

:func:`record_stop_reasons` (called by every stopping rule, the flavors and
:func:`ignitrain.attach`) declares ``engine.state.stop_reason``: ``None`` while nothing
stopped the run, else the first reason given -- one of the ``STOP_*`` strings below for
ignitrain's rules, the class or function name of whatever else called
``engine.terminate()`` (Ignite's ``EarlyStopping``, ``TerminateOnNan``, ``TimeLimit``,
a user's handler). Read it with :func:`stop_reason`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from ignite.engine import Engine, Events

from ignitrain.errors import is_count, is_number
from ignitrain.steps import NON_FINITE_LOSS

__all__ = [
    "STOP_EARLY",
    "STOP_TARGET",
    "STOP_NAN",
    "STOP_TIME",
    "STOP_MAX_STEPS",
    "STOP_SIGNAL",
    "STOP_REASONS",
    "STATE_ATTRIBUTE",
    "check_engine",
    "check_number",
    "record_stop_reasons",
    "stop",
    "stop_reason",
]

logger = logging.getLogger("ignitrain.handlers.stopping")

#: The validation metric stopped improving for ``patience`` evaluations.
STOP_EARLY = "early_stopping"
#: Every ``stop_when`` target was reached.
STOP_TARGET = "target_reached"
#: The loss was NaN or infinite (decided by the training step, before the update): the
#: step's own constant, so the string has one source (handlers import steps, never the
#: other way round).
STOP_NAN = NON_FINITE_LOSS
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


#: The ``engine.state`` attribute holding the stop reason (see :func:`record_stop_reasons`).
STATE_ATTRIBUTE = "stop_reason"


class _Attached:
    """An Ignite adapter: keeps the handles of what it attached so ``remove()`` detaches it."""

    def _on(self, engine: Engine, event: Any, handler: Any) -> None:
        self.__dict__.setdefault("_handles", []).append(engine.add_event_handler(event, handler))

    def remove(self) -> None:
        """Detach every handler this adapter added."""
        for handle in self.__dict__.pop("_handles", []):
            handle.remove()


# -- argument checks every rule makes ------------------------------------------------


def check_engine(name: str, engine: Any) -> None:
    """Raise ``TypeError`` unless argument ``name`` is an Ignite ``Engine``."""
    if not isinstance(engine, Engine):
        raise TypeError(f"Argument {name}={engine!r} is not allowed: expected an ignite Engine")


def check_number(name: str, value: Any, *, minimum: float, integer: bool = False) -> None:
    """Raise ``ValueError`` unless argument ``name`` is a number (``integer``: an
    integer) ``>= minimum``; a ``bool`` is neither."""
    ok = is_count(value) if integer else is_number(value)
    if not ok or not value >= minimum:
        what = "an integer" if integer else "a number"
        raise ValueError(f"Argument {name}={value!r} is not allowed: expected {what} >= {minimum}")


# -- stopping an engine and recording why ------------------------------------------


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
    check_engine("engine", engine)
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
    check_engine("engine", engine)
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
