"""Checks of every ``TrainConfig`` option: types, ranges, choices and how options combine.

:func:`validate_config` runs at ``TrainConfig`` construction, before anything is built
or written. Each wrong value raises one ``TypeError`` (wrong type) or
:class:`~ignitrain.errors.ConfigError` (a ``ValueError``: wrong value) naming the field,
the value received, what is allowed, and a close match for a typo. Some checks also
normalise (``amp="BF16"`` -> ``"bf16"``, ``val/loss`` -> ``loss``, numbers -> ``float``).

Kept apart from ``config.py`` (the dataclass and its files) because the checks reach
the registry, metric names, callbacks and evaluation sets, none of which the fields need.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ignitrain import registry  # schedule names resolved at call time: see registry.__getattr__
from ignitrain.callbacks import check_callbacks
from ignitrain.errors import ConfigError, is_count, is_number, suggest
from ignitrain.metric_names import canonical_metric
from ignitrain.registry import (
    check_loss_spec,
    has_momentum,
    loss_class,
    optimizer_class,
)

__all__ = ["END", "check_eval_every", "validate_config"]

_AMP_CHOICES = (False, True, "bf16", "fp16", "auto")
_MODES = (None, "min", "max")
_PARALLEL_CHOICES = ("auto", "ddp", "fsdp")

END = "end"
"""``eval_every`` value meaning "once, when training ends"."""


def check_eval_every(value: Any, field: str = "TrainConfig.eval_every") -> dict[str, Any]:
    """``{split: N epochs or "end"}``, validated.

    Lives here, not in :mod:`ignitrain.handlers.evaluation` (which re-exports it), so
    that checking a config never imports the handlers package.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{field}={value!r} is not allowed: expected a mapping split -> epochs or 'end', "
            "e.g. {'test': 'end', 'val': 2}"
        )
    for split, every in value.items():
        if not isinstance(split, str) or not ((is_count(every) and every >= 1) or every == END):
            raise ValueError(
                f"{field}={dict(value)!r} is not allowed: expected split names mapped to an "
                f"integer >= 1 (every N epochs) or 'end' (once, when training ends)"
            )
    return dict(value)


def _fail(name: str, value: Any, allowed: str, exc: type[Exception] = ConfigError) -> None:
    raise exc(f"TrainConfig.{name}={value!r} is not allowed: expected {allowed}")


def _int(cfg: Any, name: str, minimum: int, *, optional: bool = False) -> None:
    value = getattr(cfg, name)
    if optional and value is None:
        return
    if not is_count(value):
        _fail(name, value, f"an integer >= {minimum}" + (" or None" if optional else ""), TypeError)
    if value < minimum:
        _fail(name, value, f"an integer >= {minimum}" + (" or None" if optional else ""))


def _float(
    cfg: Any,
    name: str,
    *,
    positive: bool = False,
    optional: bool = False,
    upper: float | None = None,
) -> None:
    value = getattr(cfg, name)
    if optional and value is None:
        return
    what = "a positive number" if positive else "a number >= 0"
    if upper is not None:
        what += f" and <= {upper}"
    what += " or None" if optional else ""
    if not is_number(value):
        _fail(name, value, what, TypeError)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        _fail(name, value, what)
    if upper is not None and value > upper:
        _fail(name, value, what)
    setattr(cfg, name, float(value))


def _bool(cfg: Any, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, bool):
        _fail(name, value, "True or False", TypeError)


def validate_config(cfg: Any) -> None:
    """Check and normalise every option of ``cfg`` (a ``TrainConfig``), in place.

    Raises:
        TypeError: an option has the wrong type.
        ConfigError: an option has a value that is not allowed, or two contradict.
    """
    for name in (
        "num_epochs",
        "batch_size",
        "log_every",
        "validate_every",
        "n_saved",
        "grad_accumulation_steps",
    ):
        _int(cfg, name, 1)
    for name in ("num_workers", "warmup_steps"):
        _int(cfg, name, 0)
    _int(cfg, "max_steps", 1, optional=True)
    _int(cfg, "val_batch_size", 1, optional=True)
    _int(cfg, "early_stopping_patience", 1, optional=True)
    _int(cfg, "seed", 0, optional=True)
    if not is_count(cfg.save_every):
        _fail(
            "save_every",
            cfg.save_every,
            "an integer: N iterations, -1 every epoch, 0 never",
            TypeError,
        )
    if cfg.save_every < -1:
        _fail("save_every", cfg.save_every, "an integer: N iterations, -1 every epoch, 0 never")
    _float(cfg, "lr", positive=True)
    _float(cfg, "weight_decay")
    _float(cfg, "early_stopping_min_delta")
    _float(cfg, "momentum", optional=True, upper=1.0)
    _float(cfg, "max_grad_norm", positive=True, optional=True)
    _float(cfg, "grad_clip_value", positive=True, optional=True)
    _float(cfg, "time_limit", positive=True, optional=True)
    _float(cfg, "dist_timeout", positive=True)
    for name in (
        "shuffle",
        "drop_last",
        "save_best",
        "stop_on_nan",
        "compile",
        "channels_last",
        "deterministic",
        "progress_bar",
        "tensorboard",
        "verbose",
        "overwrite",
    ):
        _bool(cfg, name)
    _validate_choices(cfg)
    _validate_parallel(cfg)  # issue 14
    _validate_containers(cfg)
    _validate_objects(cfg)
    _validate_issue13(cfg)
    _validate_issue15(cfg)


# -- issue 13: metric names from other trainers, loss specs, callbacks ----------------


def _validate_issue13(cfg: Any) -> None:
    # one spelling for every handler: "eval_loss", "val/loss" -> "loss"
    if cfg.best_metric is not None:
        cfg.best_metric = canonical_metric(cfg.best_metric)
    cfg.stop_when = {canonical_metric(k): v for k, v in cfg.stop_when.items()}
    cfg.callbacks = check_callbacks(cfg.callbacks, field="TrainConfig.callbacks")


def _validate_issue15(cfg: Any) -> None:
    # issue 15: evaluation sets, EMA, MLflow, profile
    cfg.eval_every = check_eval_every(cfg.eval_every)
    if cfg.ema_decay is not None and (not is_number(cfg.ema_decay) or not 0 < cfg.ema_decay < 1):
        _fail("ema_decay", cfg.ema_decay, "None or a number in (0, 1), e.g. 0.999")
    _int(cfg, "ema_warmup", 0)
    for name in ("mlflow", "profile"):
        _bool(cfg, name)
    for name in ("mlflow_tracking_uri", "mlflow_experiment"):
        value = getattr(cfg, name)
        if value is not None and (not isinstance(value, str) or not value):
            _fail(name, value, "a non-empty string or None", TypeError)


def _validate_choices(cfg: Any) -> None:
    if isinstance(cfg.amp, str):
        cfg.amp = cfg.amp.lower()
    if (
        cfg.amp not in _AMP_CHOICES
        or (cfg.amp == 1 and cfg.amp is not True)
        or (cfg.amp == 0 and cfg.amp is not False)
    ):
        _fail(
            "amp",
            cfg.amp,
            "False, True, 'auto', 'bf16' or 'fp16'" + suggest(cfg.amp, ["bf16", "fp16", "auto"]),
        )
    if cfg.best_mode not in _MODES:
        _fail(
            "best_mode",
            cfg.best_mode,
            "'min', 'max' or None" + suggest(cfg.best_mode, ["min", "max"]),
        )
    if not isinstance(cfg.device, str):
        if isinstance(cfg.device, torch.device):
            cfg.device = str(cfg.device)
        else:
            _fail("device", cfg.device, "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", TypeError)
    if cfg.device != "auto":
        try:
            torch.device(cfg.device)
        except (RuntimeError, ValueError):
            _fail(
                "device",
                cfg.device,
                "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
                + suggest(cfg.device, ["auto", "cpu", "cuda", "mps"]),
            )
    for name in ("best_metric", "output_dir", "resume"):
        value = getattr(cfg, name)
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
            setattr(cfg, name, value)
        if value is not None and (not isinstance(value, str) or not value):
            _fail(name, value, "a non-empty string or None", TypeError)
    if cfg.resume is not None and cfg.resume != "latest" and cfg.output_dir is None:
        if not Path(cfg.resume).exists():
            _fail(
                "resume",
                cfg.resume,
                "'latest' (with output_dir set) or the path of an existing checkpoint"
                + suggest(cfg.resume, ["latest"]),
            )
    if cfg.resume == "latest" and cfg.output_dir is None:
        _fail(
            "resume",
            cfg.resume,
            "output_dir to be set: 'latest' means the newest checkpoint in output_dir",
        )


# -- issue 14: parallel / FSDP options --------------------------------------------


def _validate_parallel(cfg: Any) -> None:
    if not isinstance(cfg.parallel, str):
        _fail("parallel", cfg.parallel, "'auto', 'ddp' or 'fsdp'", TypeError)
    cfg.parallel = cfg.parallel.lower()
    if cfg.parallel not in _PARALLEL_CHOICES:
        _fail(
            "parallel",
            cfg.parallel,
            "'auto', 'ddp' or 'fsdp'" + suggest(cfg.parallel, _PARALLEL_CHOICES),
        )
    for name in ("fsdp_cpu_offload", "fsdp_reshard_after_forward"):
        _bool(cfg, name)
    wrap = cfg.fsdp_wrap
    allowed = "'auto', a list of module class names, or a minimum parameter count >= 1"
    if isinstance(wrap, str):
        # one class name is a list of one; "auto" stays the default policy
        cfg.fsdp_wrap = wrap if wrap == "auto" else [wrap]
        if wrap != "auto" and (not wrap.isidentifier()):
            _fail("fsdp_wrap", wrap, allowed)
    elif is_count(wrap):
        if wrap < 1:
            _fail("fsdp_wrap", wrap, allowed)
    elif isinstance(wrap, (list, tuple)):
        if not wrap or not all(isinstance(n, str) and n.isidentifier() for n in wrap):
            _fail("fsdp_wrap", wrap, allowed, TypeError)
        cfg.fsdp_wrap = list(wrap)
    else:
        _fail("fsdp_wrap", wrap, allowed, TypeError)
    fsdp_only = cfg.fsdp_cpu_offload or cfg.fsdp_wrap != "auto"
    if fsdp_only and cfg.parallel != "fsdp":
        raise ConfigError(
            f"TrainConfig.fsdp_wrap={cfg.fsdp_wrap!r}/fsdp_cpu_offload={cfg.fsdp_cpu_offload!r} "
            f"only take effect with parallel='fsdp' (got parallel={cfg.parallel!r})"
        )


def _validate_containers(cfg: Any) -> None:
    if not isinstance(cfg.optimizer_kwargs, Mapping):
        _fail("optimizer_kwargs", cfg.optimizer_kwargs, "a mapping of keyword arguments", TypeError)
    cfg.optimizer_kwargs = dict(cfg.optimizer_kwargs)
    if isinstance(cfg.metrics, str):
        cfg.metrics = [cfg.metrics]
    if not isinstance(cfg.metrics, (list, tuple)) or not all(
        isinstance(m, str) for m in cfg.metrics
    ):
        _fail("metrics", cfg.metrics, "a list of metric names, e.g. ['top5', 'f1']", TypeError)
    cfg.metrics = list(cfg.metrics)
    if not isinstance(cfg.stop_when, Mapping):
        _fail(
            "stop_when",
            cfg.stop_when,
            "a mapping metric -> target, e.g. {'accuracy': 0.99}",
            TypeError,
        )
    for metric, target in cfg.stop_when.items():
        if not isinstance(metric, str) or not is_number(target) or not math.isfinite(target):
            _fail(
                "stop_when",
                dict(cfg.stop_when),
                "a mapping of metric names to finite numbers",
                TypeError,
            )
    cfg.stop_when = {k: float(v) for k, v in cfg.stop_when.items()}
    if cfg.max_grad_norm is not None and cfg.grad_clip_value is not None:
        raise ConfigError(
            f"TrainConfig.max_grad_norm={cfg.max_grad_norm!r} and grad_clip_value="
            f"{cfg.grad_clip_value!r} contradict each other: clip by norm or by value, not both"
        )


def _validate_objects(cfg: Any) -> None:
    if isinstance(cfg.optimizer, str):
        optimizer_class(cfg.optimizer, field="optimizer")
    elif not (isinstance(cfg.optimizer, torch.optim.Optimizer) or callable(cfg.optimizer)):
        _fail(
            "optimizer",
            cfg.optimizer,
            "an optimizer name, a torch.optim.Optimizer or a callable params -> Optimizer",
            TypeError,
        )
    if isinstance(cfg.loss, str):
        loss_class(cfg.loss, field="loss")
    elif isinstance(cfg.loss, Mapping):  # issue 13: {"name": ..., **arguments}
        cfg.loss = check_loss_spec(cfg.loss, field="loss")
    elif cfg.loss is not None and not callable(cfg.loss):
        _fail(
            "loss",
            cfg.loss,
            "a loss name, a spec {'name': ..., **args}, an nn.Module or a callable "
            "(y_pred, y) -> loss",
            TypeError,
        )
    for name in ("lr_scheduler", "momentum_scheduler"):
        spec = getattr(cfg, name)
        if isinstance(spec, str):
            registry.check_schedule_name(spec, field=name)
        elif isinstance(spec, Mapping):
            if "name" not in spec:
                _fail(
                    name,
                    dict(spec),
                    "a spec mapping with a 'name' key, e.g. {'name': 'step', 'step_size': 10}",
                )
            registry.check_schedule_name(spec["name"], field=name)
        elif spec is not None and not callable(spec) and not hasattr(spec, "state_dict"):
            _fail(
                name,
                spec,
                "None, a schedule name, a spec mapping, a factory callable or a scheduler",
                TypeError,
            )
    if cfg.momentum_scheduler is not None and isinstance(cfg.optimizer, str):
        if not has_momentum(cfg.optimizer):
            _fail(
                "momentum_scheduler",
                cfg.momentum_scheduler,
                f"an optimizer with momentum or betas (optimizer={cfg.optimizer!r} has neither)",
            )
