"""Learning-rate and momentum schedules that step at the unit they were written for.

:func:`build_schedule` turns a spec (a name, a spec dict, a factory, a torch scheduler
or an Ignite ``ParamScheduler``) into a :class:`Schedule`; :func:`attach_schedule`
attaches it to any Ignite ``Engine``::

    schedule = build_schedule("cosine", optimizer, num_epochs=20, steps_per_epoch=len(loader),
                              warmup_steps=100)
    attach_schedule(trainer, schedule)
    to_save["lr_scheduler"] = schedule         # state_dict / load_state_dict for resume

Named schedules (``unit`` is the default; a spec dict may set ``"unit"``). ``L`` is the
length of training in that unit: ``num_epochs`` for epoch schedules, the training
iterations after warm-up (``total_steps - warmup_steps``) for iteration schedules.

==================  =========  =================================================
name                unit       defaults
==================  =========  =================================================
constant            iteration  --
step                epoch      step_size=max(1, L // 3), gamma=0.1
multistep           epoch      milestones=[L // 2, 3 * L // 4], gamma=0.1
exponential         epoch      gamma=0.01 ** (1 / L): 1 % of the base at the end
cosine              iteration  T_max=L, eta_min=0
cosine_restarts     iteration  T_0=max(1, L // 3), T_mult=1, eta_min=0
linear              iteration  start_factor=1, end_factor=0, total_iters=L
polynomial          iteration  total_iters=L, power=1
onecycle            iteration  max_lr=the optimizer's value, total_steps=L,
                               pct_start=0.3, div_factor=25 (LR only)
piecewise_linear    iteration  milestones_values=[(step, value), ...] (required,
                               absolute values)
plateau             metric     mode inferred from the metric name, factor=0.1,
                               patience=10
cyclic_momentum     iteration  base_momentum=0.85, max_momentum=0.95,
                               pct_start=0.3, total_steps=L: 0.95 -> 0.85 at the
                               one-cycle LR peak -> 0.95 (momentum only)
==================  =========  =================================================

Each gives the values of the torch scheduler of the same name (``StepLR``,
``CosineAnnealingLR``, ``CosineAnnealingWarmRestarts``, ``LinearLR``, ``PolynomialLR``,
``OneCycleLR``, ``ReduceLROnPlateau``), computed by Ignite (:mod:`.named`; built in :mod:`.build`):
Ignite's ``CosineAnnealingScheduler`` (``cosine``, ``cosine_restarts``; ``T_0`` at least 2) and
``PiecewiseLinear`` (``linear``, ``piecewise_linear``), the others torch's scheduler in
Ignite's ``LRScheduler``; ``plateau`` is torch's ``ReduceLROnPlateau`` (:mod:`.drivers`).

Parameters keep the torch/Ignite names (``step_size``, ``T_max``, ``milestones_values``).
A parameter may be a placeholder string resolved when the loaders exist:
``"{num_epochs}"``, ``"{steps_per_epoch}"``, ``"{total_steps}"``, also in arithmetic
(``"{total_steps} // 3"``; ``+ - * / // % **`` and parentheses). ``onecycle`` and
``cyclic_momentum`` hold their final value if training runs past ``total_steps``.

How a schedule steps:

* The named schedules compute their values on a private *shadow* optimizer (one
  parameter group per real group) and copy them into the real optimizer. This is how
  one scheduler drives ``lr``, SGD/RMSprop ``momentum`` and Adam-family ``betas[0]``
  alike, and why a warm-up overwriting the real ``lr`` cannot corrupt a chainable torch
  scheduler.
* ``ITERATION_STARTED`` writes the current value into every parameter group, so the
  first iteration trains with step 0's value and a resumed run writes the restored
  value before its first update. Iteration schedules advance here, once per iteration.
* Epoch schedules advance once per epoch, never per iteration (Ignite's
  ``setup_common_training_handlers`` steps torch schedulers every iteration): at the
  first ``ITERATION_STARTED`` of each new epoch, which is equivalent to stepping at
  ``EPOCH_COMPLETED`` but also right after resuming from a checkpoint written at the
  last iteration of an epoch (Ignite does not fire that ``EPOCH_COMPLETED`` again).
* Metric schedules (``plateau``) advance after each run of the evaluator, with its
  metric, at most once per training iteration count.
* Warm-up always counts iterations: iteration ``t < warmup_steps`` (0-based) uses
  ``v0 * (f + (1 - f) * (t + 1) / warmup_steps)``, where ``v0`` is the main schedule's
  first value and ``f`` is ``warmup_start_factor`` (default 0). The main schedule
  starts after warm-up: its step 0 is used at iteration ``warmup_steps``; an epoch or
  metric schedule advances only at epoch ends / evaluations after warm-up is over.

``Schedule.state_dict()`` holds the iteration count, the current values and the
scheduler's own state, so a resumed run continues the exact value sequence.

Counting units: ``warmup_steps``, ``steps_per_epoch`` / ``{NUM_UPDATE_STEPS_PER_EPOCH}``
and ``total_steps`` count optimizer steps. Under ``grad_accumulation_steps=k`` an
iteration schedule advances once per group of ``k`` micro-batches (at its first one;
an epoch's last group may be shorter), ``{TRAIN_DATALOADER_LEN}`` stays the number of
batches. A factory is called with the optimizer only (pytorch-accelerated's
``create_scheduler_fn``: ``functools.partial(StepLR, step_size=7, gamma=0.1)``); the
older ``(optimizer, num_epochs, steps_per_epoch)`` form still works.

Resume with another ``num_epochs`` (the length a schedule is planned over): a
``cosine`` or ``linear`` schedule is re-planned -- it continues from the current value to
its end value over the steps left -- so the value never jumps back up; the other
schedules keep their saved plan (epoch schedules, ``onecycle``, ``polynomial`` hold or
keep decaying past their end; ``cosine_restarts`` keeps its cycles). One log line says
which (:meth:`Schedule.load_state_dict`).

Ignite underneath, and what is kept custom (each with the test showing why):

* Any Ignite ``ParamScheduler`` (``LRScheduler``, ``CosineAnnealingScheduler``,
  ``PiecewiseLinear``, ``ConcatScheduler``, the result of
  ``create_lr_scheduler_with_warmup``, ``ParamGroupScheduler``,
  ``ReduceLROnPlateauScheduler``) is accepted as ``lr_scheduler=``/``momentum_scheduler=``,
  driven at the unit chosen and checkpointed with the run; a torch scheduler object is
  driven through Ignite's ``LRScheduler``. A ``ParamScheduler`` attached to the engine
  beside an ignitrain schedule of the same value, and ``FastaiLRFinder`` on the run's
  engine, are refused at ``STARTED`` (:class:`LRWriterGuard`).
* Kept custom: the :class:`Schedule` around the Ignite scheduler, because Ignite cannot
  (a) put an *iteration* warm-up in front of an *epoch* or *metric* schedule --
  ``create_lr_scheduler_with_warmup`` returns one scheduler for one event
  (``test_ignite_warmup_cannot_front_an_epoch_schedule``); (b) write Adam-family
  ``betas[0]`` -- a ``ParamScheduler`` writes a plain key
  (``test_ignite_scheduler_cannot_write_betas``); (c) count optimizer steps under
  gradient accumulation -- it steps per event; (d) re-plan a saved schedule for a new
  length. ``plateau`` steps torch's ``ReduceLROnPlateau`` itself: Ignite's
  ``ReduceLROnPlateauScheduler`` needs the metric name at construction
  (``test_ignite_plateau_needs_the_metric_at_construction``), known here only at
  :func:`attach_schedule`. Ignite defects worked around in :mod:`.drivers`:
  ``LRScheduler(CosineAnnealingWarmRestarts).state_dict()`` holds a private object that
  ``torch.load(weights_only=True)`` refuses (``test_ignite_lr_scheduler_state_of_warm_restarts``);
  ``LRScheduler``'s first call writes a chainable torch scheduler's *second* value
  (``test_ignite_lr_scheduler_is_one_step_ahead_at_its_first_call``).
"""

from ignitrain.handlers.schedules.build import (
    PLACEHOLDERS,
    UNITS,
    BuildOptions,
    Placeholder,
    build_schedule,
    resolve_placeholders,
)
from ignitrain.handlers.schedules.drivers import param_values, set_param_values
from ignitrain.handlers.schedules.handler import (
    LRWriterGuard,
    ScheduleHandler,
    attach_lr_writer_guard,
    attach_schedule,
)
from ignitrain.handlers.schedules.named import SCHEDULE_NAMES, canonical_schedule_name
from ignitrain.handlers.schedules.schedule import Plan, Schedule

__all__ = [
    "PLACEHOLDERS",
    "SCHEDULE_NAMES",
    "UNITS",
    "BuildOptions",
    "LRWriterGuard",
    "Placeholder",
    "Plan",
    "Schedule",
    "ScheduleHandler",
    "attach_lr_writer_guard",
    "attach_schedule",
    "build_schedule",
    "canonical_schedule_name",
    "param_values",
    "resolve_placeholders",
    "set_param_values",
]
