"""What a resume does with each option that differs from the checkpoint's config.

One table, :data:`RULES`: every ``TrainConfig`` option has one of three actions.

* ``apply`` -- the resumed run uses the new value, and the checkpoints it writes record
  it. For ``lr``, ``weight_decay``, ``momentum`` and ``optimizer_kwargs`` that means
  writing the new value into the optimizer state being loaded (the saved param groups
  would silently bring the old value back otherwise).
* ``refuse`` -- the checkpoint's state cannot mean the same thing under the new value
  (another optimizer class, model class, flavor, accumulation, batch size, schedule):
  :class:`~ignitrain.errors.CheckpointError` naming the option and both values, before
  anything is loaded.
* ``warn`` -- accepted, but the run is no longer the uninterrupted run it continues (a new
  seed changes the data order from here on): one warning naming the options.

An option missing from the table (a new field) is warned about, never ignored.
:func:`apply_resume_rules` is the one call ``resume_from`` makes before loading.

Beside the options, two records of the checkpoint are compared: the model class of each
model and the flavor (``"classification"``, ``"regression"``...; a checkpoint written
before the flavor was recorded is accepted unchecked), both refused when they differ.
And the epoch: the saved engine state holds the epoch length (batches per epoch) its
data position counts in; Ignite keeps that saved length on resume whatever the new
loader's length (``Engine.run`` takes ``epoch_length`` from the state), so a new batch
size or a new dataset size would silently cut or stretch every epoch. A different
length is refused.

The explicit override, ``TrainConfig.resume_allow=["batch_size"]`` (CLI: ``--set
train.resume_allow=[batch_size]``), accepts a new batch size (or data length) and
re-plans the epoch (:func:`replan_epoch`): the saved position moves to the start of the
epoch it was in, counted in the new loader's batches. A checkpoint taken at an epoch's
end continues exactly at the next epoch; one taken mid-epoch restarts that epoch (its
first batches are trained again; a warning says how many), since the samples seen so far
are not a whole number of new batches in general. Refused with an LR schedule, whose
saved plan counts the old iterations.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ignitrain.data import loader_length
from ignitrain.describe import describe_model
from ignitrain.errors import CheckpointError, ConfigError, is_number
from ignitrain.handlers.checkpoint import OBJECTS_KEY, saved_states

__all__ = [
    "APPLY",
    "OVERRIDABLE",
    "REFUSE",
    "RULES",
    "WARN",
    "Change",
    "apply_resume_rules",
    "check_resume_allow",
    "decide",
    "replan_epoch",
    "write_into_live_optimizers",
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
    "resume_allow": (APPLY, "how this run started"),
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

#: Refused options ``TrainConfig.resume_allow`` may name, and what accepting them does.
OVERRIDABLE: dict[str, str] = {
    "batch_size": "the epoch is re-planned in batches of the new size (replan_epoch)",
}

# Differences too ordinary to log (every resume has them).
_QUIET = {"resume", "output_dir", "overwrite", "resume_allow"}

# The name the flavors give the training engine among the checkpointed objects.
_ENGINE = "trainer"

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
    both_numbers = all(is_number(v) for v in (a, b))
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


def _flavor_changes(trainer: Any, payload: Mapping[str, Any]) -> list[Change]:
    # A checkpoint of ignitrain before the record (or of Ignite) has none: no check.
    old, new = payload.get("flavor"), getattr(trainer, "flavor", None)
    if old is None or new is None or old == new:
        return []
    why = "the saved model was trained for another task (its outputs, targets and metrics)"
    return [Change("flavor", old, new, REFUSE, why)]


def _states(payload: Mapping[str, Any]) -> Any:
    # the flat layout (format 2): {name: state, ..., OBJECTS_KEY: [names]}; format 1: "state"
    return saved_states(payload) if OBJECTS_KEY in payload else payload.get("state")


def _saved_engine(payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
    states = _states(payload)
    engine = states.get(_ENGINE) if isinstance(states, Mapping) else None
    return engine if isinstance(engine, Mapping) else None


def _epoch_changes(trainer: Any, payload: Mapping[str, Any], allowed: set[str]) -> list[Change]:
    engine = _saved_engine(payload)
    old = engine.get("epoch_length") if engine is not None else None
    new = loader_length(trainer.train_loader)
    if old is None or new is None or old == new:
        return []
    if "batch_size" in allowed:
        return [Change("epoch length", old, new, APPLY, "re-planned (resume_allow)")]
    why = (
        "the saved data position counts batches of the old epoch (a new batch size or "
        "dataset size); TrainConfig.resume_allow=['batch_size'] re-plans the epoch"
    )
    return [Change("epoch length (batches per epoch)", old, new, REFUSE, why)]


def _overridden(change: Change, allowed: set[str]) -> Change:
    if change.action == REFUSE and change.option in allowed:
        return Change(change.option, change.saved, change.now, APPLY, OVERRIDABLE[change.option])
    return change


def _group_values(changes: list[Change]) -> dict[str, Any]:
    """The param-group keys and values the applied optimizer options set."""
    values: dict[str, Any] = {}
    for change in changes:
        if change.action != APPLY:
            continue
        if change.option in _GROUP_KEYS and change.now is not None:
            values[_GROUP_KEYS[change.option]] = change.now
        elif change.option == "optimizer_kwargs" and isinstance(change.now, Mapping):
            values.update(change.now)
    return values


def write_into_live_optimizers(trainer: Any, changes: list[Change]) -> None:
    """Put the applied optimizer values into ``trainer``'s loaded optimizers.

    For a sharded (FSDP) folder, whose optimizer states DCP loads straight into the
    optimizers: there is no payload to write them into before (``apply_resume_rules``).
    """
    values = _group_values(changes)
    for optimizer in trainer.optimizers.values():
        for group in optimizer.param_groups:
            for key, value in values.items():
                if key in group:
                    group[key] = value


def _write_into_optimizers(trainer: Any, payload: Mapping[str, Any], changes: list[Change]):
    """Put the applied optimizer values into the optimizer states about to be loaded."""
    values = _group_values(changes)
    state = _states(payload)
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


def check_resume_allow(value: Any) -> list[str]:
    """``TrainConfig.resume_allow`` checked: a list of names from :data:`OVERRIDABLE`.

    Raises:
        ConfigError: Not a list of strings, or a name that cannot be overridden.
    """
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(
            f"TrainConfig.resume_allow={value!r} is not allowed: expected a list of option "
            f"names from {sorted(OVERRIDABLE)}"
        )
    bad = [n for n in names if n not in OVERRIDABLE]
    if bad:
        raise ConfigError(
            f"TrainConfig.resume_allow={value!r} is not allowed: {bad[0]!r} cannot be "
            f"overridden on resume; allowed: {sorted(OVERRIDABLE)}"
        )
    return list(names)


def replan_epoch(trainer: Any, payload: Mapping[str, Any]) -> int:
    """Move the saved engine position to the start of its epoch, in the new loader's batches.

    Writes into ``payload``'s engine state (before it is loaded): ``epoch_length`` becomes
    ``len(trainer.train_loader)`` and ``iteration`` the completed epochs times it, so the
    resumable sampler starts the next epoch at its first sample.

    Returns:
        The iterations of the interrupted epoch that are trained again (0 at an epoch's
        end).

    Raises:
        CheckpointError: The saved engine state or the loader's length is unknown.
    """
    engine = _saved_engine(payload)
    new = loader_length(trainer.train_loader)
    old = engine.get("epoch_length") if engine is not None else None
    if not isinstance(engine, dict) or not old or not new or "iteration" not in engine:
        raise CheckpointError(
            "resume_allow=['batch_size'] needs the saved engine's epoch length and the "
            f"training data's length to re-plan the epoch (saved {old!r}, now {new!r})"
        )
    done_epochs, partial = divmod(int(engine["iteration"]), int(old))
    # in place: the dict of ``payload`` that load_objects reads (either layout)
    engine.update(iteration=done_epochs * new, epoch_length=new)  # type: ignore[attr-defined]
    return partial


def _refuse(path: Any, refused: list[Change]) -> None:
    lines = "\n  - ".join(f"{c.describe()} ({c.why})" for c in refused)
    raise CheckpointError(
        f"Checkpoint {str(path)!r} cannot be resumed with these options changed:\n  - "
        f"{lines}\nResume with the checkpoint's values, or start a new run "
        "(overwrite=True or another output_dir)"
    )


def _replan(trainer: Any, payload: Mapping[str, Any], changes: list[Change], path: Any) -> None:
    """Re-plan the epoch when the override accepted a new batch size or epoch length."""
    moved = [c for c in changes if c.option in ("batch_size", "epoch length") and c.action == APPLY]
    if not moved:
        return
    if trainer.config.lr_scheduler:
        _refuse(
            path,
            [
                Change(
                    "batch_size with lr_scheduler",
                    None,
                    trainer.config.lr_scheduler,
                    REFUSE,
                    "the saved LR schedule counts iterations of the old batch size",
                )
            ],
        )
    saved_iteration = (_saved_engine(payload) or {}).get("iteration")
    again = replan_epoch(trainer, payload)
    engine = _saved_engine(payload) or {}
    logger.warning(
        "Resume re-plans the epoch (resume_allow=['batch_size']; %s): %d batches per epoch, "
        "saved iteration %s becomes %d%s",
        "; ".join(c.describe() for c in moved),
        engine.get("epoch_length"),
        saved_iteration,
        engine.get("iteration"),
        (
            f"; the interrupted epoch restarts from its first sample ({again} iteration(s) "
            "of it are trained again)"
            if again
            else ""
        ),
    )


def apply_resume_rules(trainer: Any, payload: Mapping[str, Any], path: Any) -> list[Change]:
    """Compare ``trainer.config`` with the checkpoint's, refuse, apply or warn (module doc).

    Call it before the payload is loaded: applied optimizer values are written into
    ``payload``'s optimizer states, so the loaded optimizer uses them, and an accepted
    new batch size re-plans the saved engine position (:func:`replan_epoch`).

    Returns:
        The changes found, each with its action.

    Raises:
        CheckpointError: A refused option differs; the message names every such option
            with both values, and the file.
    """
    allowed = set(check_resume_allow(getattr(trainer.config, "resume_allow", [])))
    saved = payload.get("config")
    changes = _model_changes(trainer, payload) + _flavor_changes(trainer, payload)
    changes += _epoch_changes(trainer, payload, allowed)
    if isinstance(saved, Mapping):
        changes = decide(saved, trainer.config.to_dict()) + changes
    else:
        logger.warning("Checkpoint %s records no config: options are not compared", path)
    changes = [_overridden(c, allowed) for c in changes]
    refused = [c for c in changes if c.action == REFUSE]
    if refused:
        _refuse(path, refused)
    _replan(trainer, payload, changes, path)
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
