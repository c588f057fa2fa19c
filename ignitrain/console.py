"""What a run prints by default: the epoch lines and one final line, on stderr.

ignitrain reports through the ``"ignitrain"`` logger. A new user who configured no
``logging`` saw nothing at all (Python shows only warnings then), so with
``TrainConfig.verbose=True`` (the default) :func:`attach_console` gives that logger a
stderr handler, once per process, that stands aside as soon as the user configures
logging themselves (a handler on the root logger): their set-up then decides what is
shown, and nothing is printed twice. ``verbose=False`` adds nothing.

It also keeps the run's wall time in ``history.meta["wall_time_s"]`` (the report shows
it) and logs :func:`final_line` at ``COMPLETED``: epochs run, wall time, the best value
of the ranking metric and why training stopped.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events

from ignitrain.metric_names import is_train_metric
from ignitrain.run_story import best_of

__all__ = ["ensure_console_output", "attach_console", "final_line"]

logger = logging.getLogger("ignitrain")


class _NoRootHandlers(logging.Filter):
    """Pass records only while the root logger has no handlers (the user's set-up wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not logging.getLogger().handlers


def ensure_console_output() -> None:
    """Make ``ignitrain`` INFO records reach stderr when logging is not configured."""
    if any(getattr(h, "_ignitrain_console", False) for h in logger.handlers):
        return
    if logger.handlers or logging.getLogger().handlers:
        return  # configured by the user (or the CLI): their levels and handlers decide
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_NoRootHandlers())
    handler._ignitrain_console = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def final_line(engine: Engine, trainer: Any, seconds: float, metric: str | None) -> str:
    """``"Finished 10 epochs (2300 iterations) in 12.3s | best val/accuracy 0.98 at
    epoch 8 | completed"``."""
    history = trainer.history
    parts = [
        f"Finished {engine.state.epoch} epochs ({engine.state.iteration} iterations) "
        f"in {seconds:.1f}s"
    ]
    if metric:
        name = metric if is_train_metric(metric) else f"val/{metric}"
        best = best_of(history, name, mode=trainer.config.best_mode)
        if best is not None:
            parts.append(f"best {name} {best[0]:.4g} at epoch {best[1]}")
    reason = history.meta.get("stop_reason") or "completed"
    parts.append(f"stopped: {reason}")
    return " | ".join(parts)


def attach_console(trainer: Any, metric: str | None = None) -> None:
    """The wall time in ``history.meta["wall_time_s"]`` (summed over resumes, updated each
    epoch) and, with ``trainer.config.verbose``, console output and the final line.

    Attach it before the History's handlers so that the saved ``history.json`` holds the
    epoch's wall time and the stop reason the final line reports.
    """
    history = trainer.history
    state = {"started": time.perf_counter(), "before": 0.0}

    def started(_: Engine) -> None:
        # a resumed run's History came back from the checkpoint: continue its clock
        state["started"] = time.perf_counter()
        state["before"] = float(history.meta.get("wall_time_s") or 0.0)

    def tick(_: Engine) -> None:
        history.meta["wall_time_s"] = state["before"] + time.perf_counter() - state["started"]

    def completed(engine: Engine) -> None:
        tick(engine)
        if trainer.config.verbose and idist.get_rank() == 0:
            logger.info(final_line(engine, trainer, history.meta["wall_time_s"], metric))

    if trainer.config.verbose:
        ensure_console_output()
    trainer.engine.add_event_handler(Events.STARTED, started)
    trainer.engine.add_event_handler(Events.EPOCH_COMPLETED, tick)
    trainer.engine.add_event_handler(Events.COMPLETED, completed)
