"""The :class:`Schedule`: one optimizer value, its warm-up, its state and its re-plan.

A schedule writes ``lr`` (or ``momentum``) into every parameter group once per optimizer
step; its driver (:mod:`.drivers`) computes the main schedule's values. Kept custom
around Ignite, because Ignite cannot (a) put an *iteration* warm-up in front of an
*epoch* or *metric* schedule (``create_lr_scheduler_with_warmup`` returns one scheduler
for one event; see ``test_ignite_warmup_cannot_front_an_epoch_schedule``), (b) write
Adam-family ``betas[0]`` (a ``ParamScheduler`` writes a plain key), (c) re-plan a saved
schedule for a new training length on resume (its state holds the old cycle).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from ignite.engine import Engine

from ignitrain.handlers.modes import resolve_mode
from ignitrain.handlers.schedules.drivers import set_param_values

__all__ = ["Plan", "Schedule"]

logger = logging.getLogger("ignitrain")


@dataclass(frozen=True)
class Plan:
    """How a named schedule was planned, for a resume with another training length.

    Attributes:
        length: Main-schedule steps planned (iterations after warm-up, or epochs).
        replan: ``(remaining steps) -> driver`` continuing from the current values to
            the schedule's end value, or ``None`` when the schedule keeps its saved plan
            (step, exponential, onecycle... hold or decay past their end).
    """

    length: int
    replan: Callable[[int], Any] | None = None


class Schedule:
    """One schedule of one optimizer parameter (``lr`` or ``momentum``), with warm-up.

    It is driven by two calls, which :func:`attach_schedule` wires to engine events:
    :meth:`iteration_started` (every optimizer step, with the engine's epoch) and
    :meth:`metric_completed` (after each validation).

    Attributes:
        name: Schedule name (``"cosine"``) or the wrapped scheduler's class name.
        unit: ``"iteration"``, ``"epoch"`` or ``"metric"``.
        param_name: ``"lr"`` or ``"momentum"``.
        warmup_steps: Warm-up iterations in front of the schedule.
        warmup_start_factor: Warm-up starts from this fraction of the first value.
        plan: The :class:`Plan` of a named schedule (``None`` for scheduler objects).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        driver: Any,
        *,
        unit: str,
        param_name: str = "lr",
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.0,
        name: str = "custom",
        plan: Plan | None = None,
    ):
        self.optimizer = optimizer
        self.name = name
        self.unit = unit
        self.param_name = param_name
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = warmup_start_factor
        self.plan = plan
        self._driver = driver
        self._iterations = 0
        self._values: list[float] | None = None
        self._written: list[float] | None = None
        self._last_metric_step: int | None = None
        self._epoch: int | None = None

    def __repr__(self) -> str:
        return (
            f"Schedule(name={self.name!r}, unit={self.unit!r}, param_name={self.param_name!r}, "
            f"warmup_steps={self.warmup_steps})"
        )

    @property
    def iterations(self) -> int:
        """Iterations seen (calls of :meth:`iteration_started`)."""
        return self._iterations

    @property
    def mode(self) -> str | None:
        """Direction of a torch plateau schedule (``"min"``/``"max"``), else ``None``."""
        return getattr(self._driver, "mode", None)

    def configure_metric(self, metric: str, mode: str | None = None) -> None:
        """Set the direction of a torch ``plateau`` schedule before it sees a metric.

        ``mode=None`` keeps a mode given by the spec or the user's torch scheduler, else
        infers it from the metric name (``"loss"`` -> min); Ignite's plateau scheduler
        keeps its own configuration.

        Raises:
            ValueError: The mode was fixed explicitly to the other direction.
        """
        fixed = getattr(self._driver, "mode_fixed", True)
        if self.mode is not None and (mode is not None or not fixed):
            self._driver.configure_mode(resolve_mode(metric, mode))

    def iteration_started(self, epoch: int | None = None) -> list[float]:
        """Write this iteration's values (warm-up or schedule); returns them.

        Args:
            epoch: The engine's current epoch (``engine.state.epoch``); an epoch
                schedule advances once for every epoch that ended since the last call.
        """
        t = self._iterations
        if self._values is None:
            self._values = self._driver.start()
        elif self.unit == "iteration" and t > self.warmup_steps:
            self._values = self._driver.advance()
        elif self.unit == "epoch" and epoch is not None and self._epoch is not None:
            # Advancing on the first iteration of the next epoch (rather than at
            # EPOCH_COMPLETED) also works after resuming from a checkpoint written at
            # an epoch's last iteration: Ignite does not fire that EPOCH_COMPLETED again.
            for _ in range(epoch - self._epoch if self._warmup_over() else 0):
                self._values = self._driver.advance()
        if epoch is not None:
            self._epoch = epoch
        values = self._warmup_values(t) if t < self.warmup_steps else self._values
        self._iterations = t + 1
        self._write(values)
        return values

    def metric_completed(
        self, value: float, *, engine: Engine | None = None, step: int | None = None
    ) -> None:
        """Advance a metric schedule with a validation ``value``.

        Args:
            value: The metric value.
            engine: The evaluator (Ignite's plateau scheduler reads it).
            step: Training iteration of this evaluation; a second evaluation at the same
                step (a test run after training) is ignored.
        """
        if self.unit != "metric" or (step is not None and step == self._last_metric_step):
            return
        self._last_metric_step = step
        if self._warmup_over():
            self._values = self._driver.advance(engine, float(value))
            self._write(self._values)

    def _warmup_over(self) -> bool:
        # The main schedule has trained at least one iteration with its own values.
        return self._values is not None and self._iterations > self.warmup_steps

    def _warmup_values(self, t: int) -> list[float]:
        f = self.warmup_start_factor
        fraction = f + (1.0 - f) * (t + 1) / self.warmup_steps
        return [v * fraction for v in self._values]

    def _write(self, values: list[float]) -> None:
        set_param_values(self.optimizer, self.param_name, values)
        self._written = list(values)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the exact value sequence (``weights_only``-safe)."""
        return {
            "name": self.name,
            "unit": self.unit,
            "iterations": self._iterations,
            "values": self._values,
            "written": self._written,
            "last_metric_step": self._last_metric_step,
            "epoch": self._epoch,
            "length": None if self.plan is None else self.plan.length,
            "driver": self._driver.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` of the same schedule.

        A state planned for another training length (a resume with a changed
        ``num_epochs`` or ``max_steps``) is re-planned, see :meth:`_replan`.

        Raises:
            ValueError: ``state`` belongs to a schedule of another name or unit.
        """
        if state.get("name") != self.name or state.get("unit") != self.unit:
            raise ValueError(
                f"Cannot load the state of schedule {state.get('name')!r} "
                f"(unit {state.get('unit')!r}) into schedule {self.name!r} (unit {self.unit!r})"
            )
        self._driver.load_state_dict(state["driver"])
        self._iterations = int(state["iterations"])
        self._values = None if state["values"] is None else [float(v) for v in state["values"]]
        self._written = None if state["written"] is None else [float(v) for v in state["written"]]
        self._last_metric_step = state["last_metric_step"]
        self._epoch = state["epoch"]
        saved = state.get("length")
        if self.plan is not None and saved is not None and saved != self.plan.length:
            self._replan(int(saved))
        if self._written is not None:
            # Restore the optimizer value too, for readers before the next iteration.
            set_param_values(self.optimizer, self.param_name, self._written)

    def _replan(self, saved: int) -> None:
        # Continue from the current value to the schedule's end over the steps left of
        # the new length, so the value never jumps back up (issue 12: a cosine run
        # extended from 15 to 20 epochs climbed ~90x when its old cycle restarted).
        new, unit = self.plan.length, "epoch" if self.unit == "epoch" else "step"
        change = f"Resume: schedule {self.name!r} planned for {saved} {unit}s, now {new}"
        if self.plan.replan is None or self._values is None:
            logger.info("%s: keeps its saved plan", change)
            return
        done = max(0, self._iterations - 1 - self.warmup_steps)  # main steps taken
        remaining = max(1, new - done)
        self._driver = self.plan.replan(remaining)
        self._values = self._driver.start()  # step 0 of the new plan: the current value
        what = f"{self.param_name} continues from {self._values[0]:.6g} to its end value"
        logger.info("%s: re-planned, %s over the remaining %d %ss", change, what, remaining, unit)
