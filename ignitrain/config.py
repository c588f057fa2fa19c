"""``TrainConfig``: every training option in one validated dataclass.

Validation happens at construction, before anything is built or written: a wrong
name, type or value raises one ``TypeError``/``ValueError`` that names the field,
the value received, what is allowed, and a close match for a typo. The checks live in
:mod:`ignitrain.config_checks`; files are read by :func:`ignitrain._files.read_mapping`,
the reader job files use too.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ignitrain._files import dump_yaml, read_mapping, write_atomic
from ignitrain.aliases import alias_hint
from ignitrain.config_checks import validate_config
from ignitrain.errors import ConfigError, suggest
from ignitrain.registry import describe_loss

# ConfigError and suggest live in ignitrain.errors; re-exported for old imports
__all__ = ["ConfigError", "TrainConfig", "check_names", "suggest"]


@dataclass(kw_only=True)
class TrainConfig:
    """All options of a training run.

    Options are grouped below by what they drive. Everything not set keeps a default
    that trains a small model sensibly on one CPU.

    Attributes:
        num_epochs: Epochs to train.
        max_steps: Stop after this many optimizer iterations (``None``: no limit).
        optimizer: Name (``"sgd"``, ``"adamw"``...), a ``torch.optim.Optimizer`` or a
            callable ``params -> Optimizer``.
        lr: Learning rate (the peak rate when a schedule has warm-up).
        momentum: SGD/RMSprop momentum, or ``betas[0]`` for Adam-family optimizers.
        weight_decay: Weight decay passed to the optimizer.
        optimizer_kwargs: Extra keyword arguments for an optimizer given by name.
        loss: Name, ``nn.Module`` or callable ``(y_pred, y) -> loss``; ``None`` keeps
            the flavor's default.
        batch_size: Global batch size; under ``N`` processes each takes
            ``batch_size // N`` (Ignite's ``auto_dataloader`` convention).
        val_batch_size: Batch size of evaluation loaders (default: ``batch_size``).
        shuffle: Shuffle training data each epoch (the order depends only on ``seed``
            and the epoch, so a resumed run sees the same batches).
        num_workers: ``DataLoader`` worker processes.
        drop_last: Drop the last incomplete training batch.
        validate_every: Run validation every N epochs (and after the last one).
        metrics: Extra built-in metrics by name (classification: ``"top5"``,
            ``"precision"``, ``"recall"``, ``"f1"``).
        save_every: Checkpoint every N optimizer steps; ``-1`` every epoch; ``0`` never.
        save_best: Keep the best checkpoints by ``best_metric``.
        n_saved: How many periodic and best checkpoints to keep.
        best_metric: Validation metric that ranks checkpoints and drives early
            stopping (default: the flavor's, e.g. ``"accuracy"``).
        best_mode: ``"min"`` or ``"max"``; ``None`` infers it (names with "loss" or
            "error" are minimised).
        lr_scheduler: ``None``, a name (``"cosine"``), a spec dict
            (``{"name": "step", "step_size": 10}``), a factory callable
            ``(optimizer, num_epochs, steps_per_epoch) -> scheduler`` or a scheduler.
        warmup_steps: Linear warm-up iterations in front of ``lr_scheduler``.
        momentum_scheduler: ``None``, a name or a spec dict for ``momentum``.
        early_stopping_patience: Validations without improvement before stopping.
        early_stopping_min_delta: Smallest change that counts as an improvement.
        stop_when: Metric -> target; training stops as soon as validation reaches all
            of them, e.g. ``{"accuracy": 0.99}``.
        stop_on_nan: Stop (before the update is applied) when the loss is NaN/Inf.
        time_limit: Stop after this many seconds of training.
        grad_accumulation_steps: Micro-batches per optimizer step.
        max_grad_norm: Clip the gradient norm to this value.
        grad_clip_value: Clip every gradient element to ``[-v, v]``.
        amp: ``False``; ``"bf16"``; ``"fp16"`` (with a ``GradScaler``); ``True`` or
            ``"auto"`` picks fp16 on CUDA and bf16 elsewhere.
        compile: ``torch.compile`` the model.
        channels_last: Use the channels-last memory format for 4-D inputs.
        device: ``"auto"`` (CUDA, then MPS, then CPU) or a torch device string.
        seed: Seed for Python, NumPy and torch, and for the data order.
        deterministic: Ask torch for deterministic kernels (exact resume on CPU).
        log_every: Record the training loss every N iterations.
        progress_bar: Show a tqdm bar (only when stderr is a terminal).
        tensorboard: Write TensorBoard scalars under ``output_dir/tb``.
        output_dir: Where checkpoints, ``history.json`` and logs go; ``None`` keeps
            everything in memory.
        resume: ``None``, ``"latest"`` or a checkpoint path.
        overwrite: With ``resume=None``, replace a run already in ``output_dir`` (its
            checkpoints, history and logs) instead of refusing to mix into it.
        resume_allow: Options a resume would refuse that this run accepts on purpose:
            ``["batch_size"]`` resumes with a new batch size (or data length) and
            re-plans the epoch (``ignitrain.resume_rules``).
        dist_timeout: Seconds before a collective across processes gives up.
        parallel: How a model is spread over processes: ``"auto"`` (DDP under a process
            group, today's behaviour), ``"ddp"``, or ``"fsdp"`` (FSDP2 ``fully_shard``:
            every rank keeps a shard of parameters, gradients and optimizer state).
        fsdp_wrap: Which submodules ``"fsdp"`` shards as their own unit: ``"auto"``
            (Transformer encoder/decoder layers, ``*Block``/``*Layer`` classes and the
            children of ``nn.Sequential`` stacks), a list of module class names, or an
            integer: every smallest submodule with at least that many parameters.
        fsdp_cpu_offload: Keep sharded parameters, gradients and optimizer state on the
            CPU (FSDP2 ``CPUOffloadPolicy``); saves device memory, costs speed.
        fsdp_reshard_after_forward: Free each unit's gathered parameters after its
            forward (less memory, one more all-gather in the backward).
        verbose: Print the epoch summary and the final line to stderr (rank 0) when
            ``logging`` is not configured; ``False`` keeps the run quiet.
        callbacks: Functions ``fn(trainer, epoch, metrics)`` called after each epoch
            (qurious style; ``metrics`` maps History names to this epoch's values), or
            their import paths (``"pkg.module.fn"``).
        eval_every: Per evaluation set, epochs between runs or ``"end"`` (default:
            ``validate_every``; a set named ``"test"``: ``"end"``), e.g. ``{"test": 5}``.
        ema_decay: Keep an exponential moving average of the weights with this decay
            (e.g. ``0.999``); evaluated as ``ema/<set>/*`` and checkpointed.
        ema_warmup: Iterations over which the EMA decay ramps up from 0.
        mlflow: Log params, every History scalar, artifacts and tags to MLflow.
        mlflow_tracking_uri: MLflow tracking URI (default: ``output_dir/mlruns``).
        mlflow_experiment: MLflow experiment name (default: ``"ignitrain"``).
        profile: Attach Ignite's ``HandlersTimeProfiler``; write ``profile.csv``.
    """

    # what and how long
    num_epochs: int = 10
    max_steps: int | None = None
    # optimizer
    optimizer: Any = "adam"
    lr: float = 1e-3
    momentum: float | None = None
    weight_decay: float = 0.0
    optimizer_kwargs: dict = field(default_factory=dict)
    loss: Any = None
    # data
    batch_size: int = 32
    val_batch_size: int | None = None
    shuffle: bool = True
    num_workers: int = 0
    drop_last: bool = False
    # evaluation
    validate_every: int = 1
    metrics: list = field(default_factory=list)
    # checkpoints
    save_every: int = -1
    save_best: bool = True
    n_saved: int = 1
    best_metric: str | None = None
    best_mode: str | None = None
    # schedules
    lr_scheduler: Any = None
    warmup_steps: int = 0
    momentum_scheduler: Any = None
    # stopping
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0
    stop_when: dict = field(default_factory=dict)
    stop_on_nan: bool = True
    time_limit: float | None = None
    # the step
    grad_accumulation_steps: int = 1
    max_grad_norm: float | None = None
    grad_clip_value: float | None = None
    amp: Any = False
    compile: bool = False
    channels_last: bool = False
    # where and how
    device: str = "auto"
    seed: int | None = 0
    deterministic: bool = False
    # output
    log_every: int = 10
    progress_bar: bool = True
    tensorboard: bool = True
    output_dir: str | None = None
    resume: str | None = None
    overwrite: bool = False
    resume_allow: list = field(default_factory=list)  # issue 12: see resume_rules.OVERRIDABLE
    dist_timeout: float = 1800.0
    # issue 14: sharding over processes (FSDP2), validated in _validate_parallel
    parallel: str = "auto"
    fsdp_wrap: Any = "auto"
    fsdp_cpu_offload: bool = False
    fsdp_reshard_after_forward: bool = True
    # issue 13: what a new user sees and the habits they bring
    verbose: bool = True
    callbacks: list = field(default_factory=list)
    # issue 15: evaluation sets, EMA weights, MLflow tracking, profiling
    eval_every: dict = field(default_factory=dict)
    ema_decay: float | None = None
    ema_warmup: int = 0
    mlflow: bool = False
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str | None = None
    profile: bool = False

    def __post_init__(self) -> None:
        validate_config(self)

    # -- (de)serialisation -------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        """Names of all options, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build a config from a mapping, rejecting unknown keys with a suggestion."""
        if not isinstance(data, Mapping):
            raise TypeError(f"TrainConfig.from_dict expects a mapping, got {type(data).__name__}")
        check_names(data.keys())
        return cls(**dict(data))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a config from a ``.yaml``/``.yml`` or ``.json`` file.

        YAML is read as by job files: ``lr: 1e-3`` is the float ``0.001``.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file does not parse (the message names the file and line)
                or a value is not allowed.
        """
        data = read_mapping(path, what="config file")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view: objects (optimizers, losses, callables) become import paths."""
        data = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        data["loss"] = describe_loss(self.loss)  # issue 13: a loss keeps its arguments
        return data

    def to_file(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` as YAML or JSON (by suffix), atomically."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix in (".yaml", ".yml"):
            text = dump_yaml(data)
        else:
            text = json.dumps(data, indent=2)
        write_atomic(path, text)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated like a new config)."""
        check_names(changes.keys())
        return dataclasses.replace(self, **changes)


def check_names(names: Any) -> None:
    """Raise ``TypeError`` for a name that is not a ``TrainConfig`` field."""
    known = TrainConfig.field_names()
    for name in names:
        if name not in known:
            hint = alias_hint(name) or suggest(name, known)  # issue 13: other trainers' names
            raise TypeError(
                f"TrainConfig got an unknown option {name!r}.{hint} "
                f"Known options: {', '.join(known)}"
            )


_original_init = TrainConfig.__init__


def _init_with_suggestions(self: TrainConfig, *args: Any, **kwargs: Any) -> None:
    if args:
        raise TypeError("TrainConfig takes keyword arguments only, e.g. TrainConfig(lr=0.1)")
    check_names(kwargs.keys())
    _original_init(self, **kwargs)


_init_with_suggestions.__doc__ = _original_init.__doc__
_init_with_suggestions.__signature__ = inspect.signature(_original_init)
TrainConfig.__init__ = _init_with_suggestions  # type: ignore[method-assign]


def _plain(value: Any) -> Any:
    """Turn a config value into JSON/YAML-safe data."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    target = (
        value
        if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__")
        else type(value)
    )
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"
