"""``TrainConfig``: every training option in one validated dataclass.

Validation happens at construction, before anything is built or written: a wrong
name, type or value raises one ``TypeError``/``ValueError`` that names the field,
the value received, what is allowed, and a close match for a typo.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ignitrain.errors import ConfigError, suggest

__all__ = ["TrainConfig", "ConfigError", "suggest"]


_AMP_CHOICES = (False, True, "bf16", "fp16", "auto")
_MODES = (None, "min", "max")


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
        _validate(self)

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

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file does not parse (the message names the line) or a
                value is not allowed.
        """
        data = read_mapping(path)
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view: objects (optimizers, losses, callables) become import paths."""
        data = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        from ignitrain.registry import describe_loss  # issue 13: a loss keeps its arguments

        data["loss"] = describe_loss(self.loss)
        return data

    def to_file(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` as YAML or JSON (by suffix), atomically."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix in (".yaml", ".yml"):
            yaml = _import_yaml()
            text = yaml.safe_dump(data, sort_keys=False)
        else:
            text = json.dumps(data, indent=2)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated like a new config)."""
        check_names(changes.keys())
        return dataclasses.replace(self, **changes)


def check_names(names: Any) -> None:
    """Raise ``TypeError`` for a name that is not a ``TrainConfig`` field."""
    known = TrainConfig.field_names()
    for name in names:
        if name not in known:
            from ignitrain.aliases import alias_hint  # issue 13: other trainers' names

            hint = alias_hint(name) or suggest(name, known)
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
_init_with_suggestions.__signature__ = __import__("inspect").signature(_original_init)
TrainConfig.__init__ = _init_with_suggestions  # type: ignore[method-assign]


# -- file reading ------------------------------------------------------------------


def _import_yaml() -> Any:
    try:
        import yaml
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
        raise ModuleNotFoundError("pip install pyyaml to read or write YAML configs") from exc
    return yaml


def read_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML or JSON file that must hold a mapping; errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        yaml = _import_yaml()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
    else:
        raise ConfigError(f"{path}: config files must end in .yaml, .yml or .json")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options, got {type(data).__name__}")
    return data


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


# -- validation --------------------------------------------------------------------


def _fail(name: str, value: Any, allowed: str, exc: type[Exception] = ConfigError) -> None:
    raise exc(f"TrainConfig.{name}={value!r} is not allowed: expected {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int(cfg: TrainConfig, name: str, minimum: int, *, optional: bool = False) -> None:
    value = getattr(cfg, name)
    if optional and value is None:
        return
    if not _is_int(value):
        _fail(name, value, f"an integer >= {minimum}" + (" or None" if optional else ""), TypeError)
    if value < minimum:
        _fail(name, value, f"an integer >= {minimum}" + (" or None" if optional else ""))


def _float(
    cfg: TrainConfig,
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
    if not _is_number(value):
        _fail(name, value, what, TypeError)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        _fail(name, value, what)
    if upper is not None and value > upper:
        _fail(name, value, what)
    setattr(cfg, name, float(value))


def _bool(cfg: TrainConfig, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, bool):
        _fail(name, value, "True or False", TypeError)


def _validate(cfg: TrainConfig) -> None:
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
    if not _is_int(cfg.save_every):
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


def _validate_issue13(cfg: TrainConfig) -> None:
    from ignitrain.callbacks import check_callbacks
    from ignitrain.metric_names import canonical_metric

    # one spelling for every handler: "eval_loss", "val/loss" -> "loss"
    if cfg.best_metric is not None:
        cfg.best_metric = canonical_metric(cfg.best_metric)
    cfg.stop_when = {canonical_metric(k): v for k, v in cfg.stop_when.items()}
    cfg.callbacks = check_callbacks(cfg.callbacks, field="TrainConfig.callbacks")


def _validate_issue15(cfg: TrainConfig) -> None:
    # issue 15: evaluation sets, EMA, MLflow, profile
    from ignitrain.handlers.evaluation import check_eval_every

    cfg.eval_every = check_eval_every(cfg.eval_every)
    if cfg.ema_decay is not None and (not _is_number(cfg.ema_decay) or not 0 < cfg.ema_decay < 1):
        _fail("ema_decay", cfg.ema_decay, "None or a number in (0, 1), e.g. 0.999")
    _int(cfg, "ema_warmup", 0)
    for name in ("mlflow", "profile"):
        _bool(cfg, name)
    for name in ("mlflow_tracking_uri", "mlflow_experiment"):
        value = getattr(cfg, name)
        if value is not None and (not isinstance(value, str) or not value):
            _fail(name, value, "a non-empty string or None", TypeError)


def _validate_choices(cfg: TrainConfig) -> None:
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
        import torch

        if isinstance(cfg.device, torch.device):
            cfg.device = str(cfg.device)
        else:
            _fail("device", cfg.device, "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", TypeError)
    if cfg.device != "auto":
        import torch

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

_PARALLEL_CHOICES = ("auto", "ddp", "fsdp")


def _validate_parallel(cfg: TrainConfig) -> None:
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
    elif _is_int(wrap):
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


def _validate_containers(cfg: TrainConfig) -> None:
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
        if not isinstance(metric, str) or not _is_number(target) or not math.isfinite(target):
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


def _validate_objects(cfg: TrainConfig) -> None:
    import torch

    from ignitrain import registry

    if isinstance(cfg.optimizer, str):
        registry.optimizer_class(cfg.optimizer, field="optimizer")
    elif not (isinstance(cfg.optimizer, torch.optim.Optimizer) or callable(cfg.optimizer)):
        _fail(
            "optimizer",
            cfg.optimizer,
            "an optimizer name, a torch.optim.Optimizer or a callable params -> Optimizer",
            TypeError,
        )
    if isinstance(cfg.loss, str):
        registry.loss_class(cfg.loss, field="loss")
    elif isinstance(cfg.loss, Mapping):  # issue 13: {"name": ..., **arguments}
        cfg.loss = registry.check_loss_spec(cfg.loss, field="loss")
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
        if not registry.has_momentum(cfg.optimizer):
            _fail(
                "momentum_scheduler",
                cfg.momentum_scheduler,
                f"an optimizer with momentum or betas (optimizer={cfg.optimizer!r} has neither)",
            )


# keep Callable importable for type checkers reading annotations above
_ = Callable
