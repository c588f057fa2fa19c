"""ignitrain's Ignite handlers, each usable on any Ignite ``Engine``.

Every handler class and ``attach_*`` function of the package, importable from here as
Ignite's own ``ignite.handlers`` does::

    from ignitrain.handlers import History, attach_early_stopping, attach_history

    history = attach_history(trainer, History(), evaluators={"val": evaluator})
    attach_early_stopping(trainer, evaluator, "loss", patience=3)

The modules stay importable (``ignitrain.handlers.checkpoint``...). Nothing here
imports :mod:`ignitrain.flavors`: the flavors are built on the handlers, not the
other way round.
"""

from __future__ import annotations

from ignitrain.handlers.attached import AttachedHandler, AttachedHandlers
from ignitrain.handlers.checkpoint import (
    CheckpointDir,
    CheckpointError,
    CheckpointHandler,
    CheckpointOptions,
    CheckpointStore,
    DurableSaver,
    RNGState,
    attach_checkpoints,
)
from ignitrain.handlers.ema import EMAState, attach_ema
from ignitrain.handlers.evaluation import EvalSet, SplitRouter, attach_evaluations
from ignitrain.handlers.history import History, attach_history
from ignitrain.handlers.journal import Journal, JournalPosition
from ignitrain.handlers.logging import (
    ScalarEventWriter,
    attach_epoch_summary,
    attach_progress_bar,
    attach_tensorboard,
)
from ignitrain.handlers.metrics import (
    AccuracyLoss,
    EpochMean,
    OutputMean,
    TrainOutputMeans,
    attach_epoch_mean,
)
from ignitrain.handlers.mlflow import MLflowTracker, attach_mlflow
from ignitrain.handlers.preemption import PreemptionHandler, attach_preemption
from ignitrain.handlers.profile import attach_profiler
from ignitrain.handlers.schedules import (
    BuildOptions,
    LRWriterGuard,
    Placeholder,
    Plan,
    Schedule,
    ScheduleHandler,
    attach_lr_writer_guard,
    attach_schedule,
)
from ignitrain.handlers.sharded import ModelState, OptimizerState, ShardedSaver
from ignitrain.handlers.stopping import (
    EarlyStoppingHandler,
    MaxStepsHandler,
    StopWhenHandler,
    TargetChecker,
    TimeLimitHandler,
    attach_early_stopping,
    attach_max_steps,
    attach_stop_when,
    attach_time_limit,
)

__all__ = [
    "AccuracyLoss",
    "AttachedHandler",
    "AttachedHandlers",
    "BuildOptions",
    "CheckpointDir",
    "CheckpointError",
    "CheckpointHandler",
    "CheckpointOptions",
    "CheckpointStore",
    "DurableSaver",
    "EMAState",
    "EarlyStoppingHandler",
    "EpochMean",
    "EvalSet",
    "History",
    "Journal",
    "JournalPosition",
    "LRWriterGuard",
    "MLflowTracker",
    "MaxStepsHandler",
    "ModelState",
    "OptimizerState",
    "OutputMean",
    "Placeholder",
    "Plan",
    "PreemptionHandler",
    "RNGState",
    "ScalarEventWriter",
    "Schedule",
    "ScheduleHandler",
    "ShardedSaver",
    "SplitRouter",
    "StopWhenHandler",
    "TargetChecker",
    "TimeLimitHandler",
    "TrainOutputMeans",
    "attach_checkpoints",
    "attach_early_stopping",
    "attach_ema",
    "attach_epoch_mean",
    "attach_epoch_summary",
    "attach_evaluations",
    "attach_history",
    "attach_lr_writer_guard",
    "attach_max_steps",
    "attach_mlflow",
    "attach_preemption",
    "attach_profiler",
    "attach_progress_bar",
    "attach_schedule",
    "attach_stop_when",
    "attach_tensorboard",
    "attach_time_limit",
]
