"""What a resume does with each option that differs from the checkpoint's config.

One table, :data:`RULES`: every ``TrainConfig`` option has one of three actions.

* ``apply`` -- the resumed run uses the new value, and the checkpoints it writes record
  it. For ``lr``, ``weight_decay``, ``momentum`` and ``optimizer_kwargs`` that means
  writing the new value into the optimizer state being loaded (the saved param groups
  would silently bring the old value back otherwise).
* ``refuse`` -- the checkpoint's state cannot mean the same thing under the new value
  (another optimizer class, model class, accumulation, batch size, schedule):
  :class:`~ignitrain.handlers.checkpoint.CheckpointError` naming the option and both
  values, before anything is loaded.
* ``warn`` -- accepted, but the run is no longer the uninterrupted run it continues (a new
  seed changes the data order from here on): one warning naming the options.

An option missing from the table (a new field) is warned about, never ignored.
:func:`apply_resume_rules` is the one call ``resume_from`` makes before loading.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "APPLY",
    "REFUSE",
    "RULES",
    "WARN",
    "Change",
    "apply_resume_rules",
    "decide",
]

logger = logging.getLogger("ignitrain")

APPLY, REFUSE, WARN = "apply", "refuse", "warn"

#: option -> (action, why). The README's table is this one.
RULES: dict[str, tuple[str, str]] = {
    # how long and when to stop: the new plan applies from the resumed iteration
    "num_epochs": (APPLY, "trains to the new end; a cosine/linear schedule is re-planned"),
    "max_steps": (APPLY, "stop rule, read each iteration"),
    "time_limit": (APPLY, "stop rule"),
    "early_stopping_patience": (APPLY, "stop rule; the saved counter carries on"),
    "early_stopping_min_delta": (APPLY, "stop rule"),
    "stop_when": (APPLY, "stop rule"),
    "stop_on_nan": (APPLY, "stop rule"),
    # optimizer hyper-parameters: written into the optimizer state being loaded
    "lr": (APPLY, "written into the loaded optimizer's param groups"),
    "weight_decay": (APPLY, "written into the loaded optimizer's param groups"),
    "momentum": (APPLY, "written into the param groups that have it"),
    "optimizer_kwargs": (APPLY, "keys the param groups hold are written into them"),
    "max_grad_norm": (APPLY, "read at each step"),
    "grad_clip_value": (APPLY, "read at each step"),
    # what the saved state means
    "optimizer": (REFUSE, "the saved optimizer state belongs to another class"),
    "grad_accumulation_steps": (REFUSE, "the saved step count and pending gradients assume it"),
    "batch_size": (REFUSE, "the saved epoch length and data position assume it"),
    "lr_scheduler": (REFUSE, "the saved schedule state belongs to another schedule"),
    "momentum_scheduler": (REFUSE, "the saved schedule state belongs to another schedule"),
    "warmup_steps": (REFUSE, "the saved schedule was planned with it"),
    # accepted, but the run differs from an uninterrupted one
    "seed": (WARN, "the data order changes from the next epoch on"),
    "shuffle": (WARN, "the data order changes"),
    "drop_last": (REFUSE, "the saved epoch length and data position assume it"),
    "loss": (WARN, "the loss changes mid-run"),
    "amp": (WARN, "the numerics change mid-run"),
    "deterministic": (WARN, "bitwise repeatability changes"),
    "best_metric": (WARN, "the saved best scores are of the old metric"),
    "best_mode": (WARN, "the saved best scores were ranked the other way"),
    "metrics": (WARN, "history series change mid-run"),
    "validate_every": (WARN, "validation points change mid-run"),
    "compile": (WARN, "the forward is compiled differently"),
    "channels_last": (WARN, "the memory format changes"),
    # where and how: nothing of the saved state depends on them
    "val_batch_size": (APPLY, "evaluation only"),
    "num_workers": (APPLY, "data loading only"),
    "save_every": (APPLY, "checkpoint timing"),
    "save_best": (APPLY, "checkpoint timing"),
    "n_saved": (APPLY, "checkpoint retention"),
    "device": (APPLY, "the state is moved to the new device"),
    "log_every": (APPLY, "logging"),
    "progress_bar": (APPLY, "logging"),
    "tensorboard": (APPLY, "logging"),
    "output_dir": (APPLY, "a moved run directory"),
    "resume": (APPLY, "how this run started"),
    "overwrite": (APPLY, "how this run started"),
    "dist_timeout": (APPLY, "process-group set-up"),
    "verbose": (APPLY, "console output"),
    "callbacks": (APPLY, "called after each epoch from here on"),
    "profile": (APPLY, "timing only"),
    "mlflow": (APPLY, "tracking only (the saved MLflow run is continued)"),
    "mlflow_tracking_uri": (WARN, "later points go to another tracking store"),
    "mlflow_experiment": (WARN, "later points go to another experiment"),
    "eval_every": (WARN, "evaluation points change mid-run"),
    # the saved state depends on them
    "ema_decay": (REFUSE, "the saved EMA weights were averaged with it (or are absent)"),
    "ema_warmup": (REFUSE, "the saved EMA warm-up counter assumes it"),
    "parallel": (WARN, "the model is sharded differently; the state is resharded on load"),
    "fsdp_wrap": (WARN, "the model is sharded differently; the state is resharded on load"),
    "fsdp_cpu_offload": (APPLY, "where the shards live"),
    "fsdp_reshard_after_forward": (APPLY, "memory/speed trade-off only"),
}

# Differences too ordinary to log (every resume has them).
_QUIET = {"resume", "output_dir", "overwrite"}

# Config options written into each optimizer param group, and the group key they set.
_GROUP_KEYS = {"lr": "lr", "weight_decay": "weight_decay", "momentum": "momentum"}


@dataclass(frozen=True)
class Change:
    """One option that differs between the checkpoint's config and the run's."""

    option: str
    saved: Any
    now: Any
    action: str
    why: str

    def describe(self) -> str:
        return f"{self.option}: {self.saved!r} in the checkpoint, {self.now!r} now"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    both_numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if both_numbers:
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower() if a.isidentifier() and b.isidentifier() else a == b
    return a == b


def decide(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[Change]:
    """The differing options of two ``TrainConfig.to_dict()`` views, each with its action.

    Options only one side has (a field added or removed between versions) are warned.
    """
    changes = []
    for option in sorted(set(saved) | set(now)):
        old, new = saved.get(option), now.get(option)
        if _same(old, new):
            continue
        action, why = RULES.get(option, (WARN, "no rule for this option"))
        changes.append(Change(option, old, new, action, why))
    return changes


def _model_changes(trainer: Any, payload: Mapping[str, Any]) -> list[Change]:
    from ignitrain.describe import describe_model

    saved = payload.get("model_description")
    if not isinstance(saved, Mapping):
        return []
    changes = []
    for name, model in trainer.models.items():
        old = saved.get(name, {}).get("class") if isinstance(saved.get(name), Mapping) else None
        new = describe_model(model)["class"]
        if old is not None and old != new:
            why = "the saved weights belong to another model class"
            changes.append(Change(f"model {name!r}", old, new, REFUSE, why))
    return changes


def _write_into_optimizers(trainer: Any, payload: Mapping[str, Any], changes: list[Change]):
    """Put the applied optimizer values into the optimizer states about to be loaded."""
    values: dict[str, Any] = {}
    for change in changes:
        if change.action != APPLY:
            continue
        if change.option in _GROUP_KEYS and change.now is not None:
            values[_GROUP_KEYS[change.option]] = change.now
        elif change.option == "optimizer_kwargs" and isinstance(change.now, Mapping):
            values.update(change.now)
    from ignitrain.handlers.checkpoint import OBJECTS_KEY, saved_states

    # the flat layout (format 2): {name: state, ..., OBJECTS_KEY: [names]}
    state = saved_states(payload) if OBJECTS_KEY in payload else payload.get("state")
    if not values or not isinstance(state, Mapping):
        return
    for name in trainer.optimizers:
        groups = (
            state.get(name, {}).get("param_groups")
            if isinstance(state.get(name), Mapping)
            else None
        )
        for group in groups or ():
            for key, value in values.items():
                if key in group:
                    group[key] = value


def apply_resume_rules(trainer: Any, payload: Mapping[str, Any], path: Any) -> list[Change]:
    """Compare ``trainer.config`` with the checkpoint's, refuse, apply or warn (module doc).

    Call it before the payload is loaded: applied optimizer values are written into
    ``payload``'s optimizer states, so the loaded optimizer uses them.

    Returns:
        The changes found, each with its action.

    Raises:
        CheckpointError: A refused option differs; the message names every such option
            with both values, and the file.
    """
    from ignitrain.handlers.checkpoint import CheckpointError

    saved = payload.get("config")
    if not isinstance(saved, Mapping):
        logger.warning("Checkpoint %s records no config: options are not compared", path)
        return []
    changes = decide(saved, trainer.config.to_dict()) + _model_changes(trainer, payload)
    refused = [c for c in changes if c.action == REFUSE]
    if refused:
        lines = "\n  - ".join(f"{c.describe()} ({c.why})" for c in refused)
        raise CheckpointError(
            f"Checkpoint {str(path)!r} cannot be resumed with these options changed:\n  - "
            f"{lines}\nResume with the checkpoint's values, or start a new run "
            "(overwrite=True or another output_dir)"
        )
    _write_into_optimizers(trainer, payload, changes)
    applied = [c for c in changes if c.action == APPLY and c.option not in _QUIET]
    if applied:
        logger.info("Resume applies: %s", "; ".join(c.describe() for c in applied))
    warned = [c for c in changes if c.action == WARN]
    if warned:
        logger.warning(
            "Resume accepts, but the run no longer equals an uninterrupted one: %s",
            "; ".join(f"{c.describe()} ({c.why})" for c in warned),
        )
    return changes
