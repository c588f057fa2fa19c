"""Config-driven jobs: a YAML/JSON file names the flavor, the model, the data and the options.

A job file::

    flavor: classification                 # classification | regression | autoencoder | ...
    model:
      class: examples.models.DigitsCNN     # import path of an nn.Module class (or factory)
      args: {channels: 16}
    data:
      factory: ignitrain.datasets.digits   # a callable returning Splits or (train, val[, test])
      args: {seed: 0}
    train:                                 # TrainConfig options
      num_epochs: 10
      lr: 0.05
      output_dir: runs/digits_cnn

Flavors with several models (GAN) take ``models: {generator: {...}, discriminator: {...}}``
instead of ``model``; ``flavor_args`` holds extra keyword arguments for the flavor's
factory. ``flavor`` may also be the import path of your own factory with the signature
``factory(model, config=, train_data=, val_data=)``.

Loading a job resolves it: shorthands are expanded (``model: pkg.Class``,
``data: digits``), ``--set`` overrides are applied and ``train`` is replaced by the full
``TrainConfig.to_dict()``, so the file written to ``output_dir/config.yaml`` records
every option and ``ignitrain train output_dir/config.yaml`` runs the same job again.

Every mistake in a job is a :class:`JobError` whose message names the file, the key and
what is allowed; the CLI prints it without a traceback.
"""

from __future__ import annotations

import copy
import datetime
import importlib
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ignitrain.config import TrainConfig, read_mapping
from ignitrain.errors import JobError, suggest
from ignitrain.seeding import seed_everything

__all__ = [
    "FLAVORS",
    "JOB_KEYS",
    "JobError",
    "JobData",
    "load_job",
    "resolve_job",
    "apply_overrides",
    "parse_override",
    "resolve_import",
    "flavor_factory",
    "build_model",
    "build_models",
    "build_data",
    "build_trainer",
    "check_job",
    "write_job",
    "run_training",
    "configure_logging",
]

logger = logging.getLogger("ignitrain")

JOB_KEYS = ("flavor", "model", "models", "data", "train", "flavor_args")
"""Top-level keys a job file may hold."""

FLAVORS: dict[str, tuple[str, str]] = {
    "classification": ("ignitrain.flavors.classification", "create_classification_trainer"),
    "regression": ("ignitrain.flavors.regression", "create_regression_trainer"),
    "autoencoder": ("ignitrain.flavors.autoencoder", "create_autoencoder_trainer"),
    "gan": ("ignitrain.flavors.gan", "create_gan_trainer"),
    "seq2seq": ("ignitrain.flavors.seq2seq", "create_seq2seq_trainer"),
    "generic": ("ignitrain.flavors.generic", "create_trainer"),
}
"""Flavor name -> (module, factory function) of the built-in flavors."""


class JobData(NamedTuple):
    """The datasets a job's data factory returned (``val``/``test`` may be ``None``)."""

    train: Any
    val: Any
    test: Any
    splits: Any


# -- reading and resolving ---------------------------------------------------------------


def load_job(path: str | os.PathLike, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read a job file, apply ``key=value`` overrides and resolve it.

    Args:
        path: A ``.yaml``/``.yml`` or ``.json`` job file.
        overrides: ``"train.lr=0.1"``-style strings (values are parsed as YAML).

    Returns:
        The resolved job (plain data; see :func:`resolve_job`).

    Raises:
        JobError: missing file, bad YAML/JSON (with line), unknown key, bad override.
    """
    path = Path(path)
    raw = _read_job_file(path)
    raw = apply_overrides(raw, overrides)
    return resolve_job(raw, source=str(path), default_output_dir=f"runs/{path.stem}")


def _yaml_loader() -> Any:
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a float.

    YAML 1.1 (PyYAML) needs a dot in a float (``1.0e-3``) and reads ``1e-3`` as a
    string; in a training config that is always meant as a number.
    """
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    number = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", number, list("-+0123456789"))
    return Loader


def _read_job_file(path: Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON job file; errors name the file and line."""
    if not path.is_file():
        raise JobError(f"job file {str(path)!r} does not exist")
    if path.suffix not in (".yaml", ".yml"):
        try:
            return read_mapping(path)  # JSON, or the message about allowed suffixes
        except ValueError as exc:
            raise JobError(str(exc)) from None
    import yaml

    try:
        data = yaml.load(path.read_text(), Loader=_yaml_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        # PyYAML marks where it gave up (often the line after an unclosed bracket or
        # quote); its context mark is where the broken construct started
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start is not None and (mark is None or start.line != mark.line):
            problem += f" ({context} started at line {start.line + 1})"
        raise JobError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise JobError(f"{path}: expected a mapping of job keys, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.1"`` -> ``(["train", "lr"], 0.1)``; the value is parsed as YAML.

    A key without a section that is a ``TrainConfig`` option means ``train.<key>``.
    """
    if not isinstance(text, str) or "=" not in text:
        raise JobError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.lr=0.1")
    key, _, value_text = text.partition("=")
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise JobError(f"--set {text!r}: the key must be a dotted path, e.g. train.lr")
    if len(parts) == 1 and parts[0] not in JOB_KEYS and parts[0] in TrainConfig.field_names():
        parts = ["train", parts[0]]
    if parts[0] not in JOB_KEYS:
        raise JobError(
            f"--set {text!r}: unknown section {parts[0]!r}.{suggest(parts[0], JOB_KEYS)} "
            f"Sections: {', '.join(JOB_KEYS)}"
        )
    import yaml

    try:
        value = yaml.load(value_text, Loader=_yaml_loader()) if value_text.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise JobError(f"--set {text!r}: the value is not valid YAML: {problem}") from None
    return parts, value


def apply_overrides(job: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``job`` with each ``key=value`` override applied in order."""
    job = copy.deepcopy(dict(job))
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = job
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, str) and depth == 0 and part in ("model", "data"):
                # expand a shorthand so that e.g. model.args.hidden can be set on it
                child = node[part] = _expand_shorthand(part, child)
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise JobError(f"--set {text!r}: {where} is {child!r}, not a mapping")
            node = child
        node[parts[-1]] = value
    return job


def resolve_job(
    raw: Mapping[str, Any], *, source: str = "job", default_output_dir: str = "runs/job"
) -> dict[str, Any]:
    """Check a job mapping and return its resolved form.

    The resolved job has ``flavor``; ``model`` (or ``models``) as ``{class, args}``;
    ``data`` as ``{factory, args}``; ``flavor_args``; and ``train`` as the complete,
    validated ``TrainConfig.to_dict()`` (``output_dir`` defaulting to
    ``default_output_dir``). Nothing is imported here.
    """
    if not isinstance(raw, Mapping):
        raise JobError(f"{source}: expected a mapping of job keys, got {type(raw).__name__}")
    for key in raw:
        if key not in JOB_KEYS:
            raise JobError(
                f"{source}: unknown key {key!r}.{suggest(key, JOB_KEYS)} "
                f"Allowed keys: {', '.join(JOB_KEYS)}"
            )
    flavor = raw.get("flavor")
    if not isinstance(flavor, str) or not flavor:
        raise JobError(
            f"{source}: 'flavor' must name the kind of training: one of {', '.join(FLAVORS)} "
            f"(or the import path of a factory), got {flavor!r}"
        )
    if flavor not in FLAVORS and "." not in flavor:
        raise JobError(
            f"{source}: unknown flavor {flavor!r}.{suggest(flavor, FLAVORS)} "
            f"Allowed: {', '.join(FLAVORS)}, or the import path of a trainer factory"
        )
    job: dict[str, Any] = {"flavor": flavor}
    if ("model" in raw) == ("models" in raw):
        raise JobError(
            f"{source}: give exactly one of 'model' (one model) or 'models' "
            "(a mapping name -> model, e.g. for a GAN)"
        )
    if "model" in raw:
        job["model"] = _resolve_spec(raw["model"], "model", "class", source)
    else:
        models = raw["models"]
        if not isinstance(models, Mapping) or not models:
            raise JobError(
                f"{source}: 'models' must be a non-empty mapping name -> {{class, args}}"
            )
        job["models"] = {
            str(name): _resolve_spec(spec, f"models.{name}", "class", source)
            for name, spec in models.items()
        }
    if "data" not in raw:
        raise JobError(
            f"{source}: missing key 'data', e.g. data: {{factory: ignitrain.datasets.digits}}"
        )
    job["data"] = _resolve_spec(raw["data"], "data", "factory", source)
    flavor_args = raw.get("flavor_args") or {}
    if not isinstance(flavor_args, Mapping):
        raise JobError(f"{source}: 'flavor_args' must be a mapping, got {flavor_args!r}")
    job["flavor_args"] = dict(flavor_args)
    job["train"] = _resolve_train(raw.get("train"), source, default_output_dir)
    return job


def _expand_shorthand(section: str, value: str) -> dict[str, Any]:
    if section == "data":
        from ignitrain import datasets

        key = value.strip().lower().replace("-", "_")
        factory = f"ignitrain.datasets.{key}" if key in datasets.NAMES else value
        return {"factory": factory, "args": {}}
    return {"class": value, "args": {}}


def _resolve_spec(spec: Any, section: str, target_key: str, source: str) -> dict[str, Any]:
    """``{class|factory: path, args: {...}}`` from the mapping or string shorthand."""
    if isinstance(spec, str):
        spec = _expand_shorthand(section.split(".")[0], spec)
    if not isinstance(spec, Mapping):
        raise JobError(
            f"{source}: {section!r} must be a mapping like {{{target_key}: pkg.module.Name, "
            f"args: {{...}}}}, got {spec!r}"
        )
    allowed = (target_key, "args")
    for key in spec:
        if key not in allowed:
            raise JobError(
                f"{source}: unknown key {section}.{key}.{suggest(key, allowed)} "
                f"Allowed: {', '.join(allowed)}"
            )
    target = spec.get(target_key)
    if not isinstance(target, str) or not target:
        raise JobError(
            f"{source}: {section}.{target_key} must be an import path like "
            f"'pkg.module.Name', got {target!r}"
        )
    if section == "data" and "." not in target:
        target = _expand_shorthand("data", target)["factory"]
    args = spec.get("args") or {}
    if not isinstance(args, Mapping):
        raise JobError(
            f"{source}: {section}.args must be a mapping of keyword arguments, got {args!r}"
        )
    return {target_key: target, "args": dict(args)}


def _resolve_train(train: Any, source: str, default_output_dir: str) -> dict[str, Any]:
    if train is None:
        train = {}
    if not isinstance(train, Mapping):
        raise JobError(f"{source}: 'train' must be a mapping of TrainConfig options, got {train!r}")
    train = dict(train)
    if train.get("output_dir") is None:
        train["output_dir"] = default_output_dir
    try:
        config = TrainConfig.from_dict(train)
    except (TypeError, ValueError) as exc:
        raise JobError(f"{source}: train: {exc}") from None
    return config.to_dict()


# -- imports -------------------------------------------------------------------------------


def _ensure_cwd_on_path() -> None:
    # `ignitrain` (the console script) does not put the working directory on sys.path
    # as `python -m` does; job files name modules relative to it (examples.models).
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def resolve_import(path: str, *, what: str = "object") -> Any:
    """Import ``"pkg.module.Name"`` (or ``"pkg.module:Name"``) and return the object.

    The working directory is put on ``sys.path`` first, so modules beside the job
    (``examples.models`` from the repository root) are found.

    Raises:
        JobError: no module or attribute of that name; the message says which part.
    """
    if not isinstance(path, str) or not path.strip():
        raise JobError(f"{what}: expected an import path like 'pkg.module.Name', got {path!r}")
    _ensure_cwd_on_path()
    path = path.strip()
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
        candidates = [(module_name, attr_path.split("."))]
    else:
        parts = path.split(".")
        if len(parts) < 2:
            raise JobError(f"{what}: {path!r} is not an import path (expected 'pkg.module.Name')")
        # the longest importable prefix is the module; the rest are attributes
        candidates = [(".".join(parts[:i]), parts[i:]) for i in range(len(parts) - 1, 0, -1)]
    last_error = None
    for module_name, attrs in candidates:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing and not (module_name == missing or module_name.startswith(missing + ".")):
                # the module exists but imports something missing: report that
                raise JobError(f"{what}: importing {module_name!r} failed: {exc}") from None
            last_error = exc
            continue
        except ImportError as exc:
            raise JobError(f"{what}: importing {module_name!r} failed: {exc}") from None
        return _get_attrs(module, module_name, attrs, path, what)
    hint = ""
    if path.split(".")[0] == "examples":
        hint = " (run ignitrain from the repository root so that 'examples' is importable)"
    raise JobError(f"{what}: cannot import {path!r}: {last_error}{hint}")


def _get_attrs(module: Any, module_name: str, attrs: list[str], path: str, what: str) -> Any:
    obj = module
    for i, attr in enumerate(attrs):
        if not hasattr(obj, attr):
            owner = ".".join([module_name, *attrs[:i]])
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise JobError(
                f"{what}: cannot import {path!r}: {owner!r} has no attribute {attr!r}."
                f"{suggest(attr, names)}"
            )
        obj = getattr(obj, attr)
    return obj


def flavor_factory(flavor: str) -> Callable[..., Any]:
    """The trainer factory of a built-in flavor name, or of an import path."""
    if flavor not in FLAVORS:
        factory = resolve_import(flavor, what="flavor")
        if not callable(factory):
            raise JobError(f"flavor: {flavor!r} is not callable")
        return factory
    module_name, function = FLAVORS[flavor]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        available = [name for name in FLAVORS if _flavor_available(name)]
        raise JobError(
            f"flavor {flavor!r} is not available in this version of ignitrain "
            f"(no module {module_name}). Available: {', '.join(available)}"
        ) from None
    return getattr(module, function)


def _flavor_available(name: str) -> bool:
    return importlib.util.find_spec(FLAVORS[name][0]) is not None


# -- building ------------------------------------------------------------------------------


def _call(target: Any, args: Mapping[str, Any], what: str, path: str) -> Any:
    """``target(**args)``; a wrong argument is the job's mistake, reported with the signature."""
    if not callable(target):
        raise JobError(f"{what}: {path!r} is not callable (got {type(target).__name__})")
    try:
        inspect.signature(target).bind(**args)
    except TypeError as exc:
        signature = _signature_text(target)
        raise JobError(
            f"{what}: {path}{signature} does not accept args {dict(args)!r}: {exc}"
        ) from None
    except ValueError:  # builtins without a signature: let the call decide
        pass
    try:
        return target(**args)
    except (TypeError, ValueError) as exc:
        raise JobError(f"{what}: {path}(**{dict(args)!r}) failed: {exc}") from None


def _signature_text(target: Any) -> str:
    """``(a, b=1, *, c=2)`` without annotations: short enough for one error line."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return "(...)"
    params = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=params, return_annotation=inspect.Signature.empty))


def build_model(spec: Mapping[str, Any], *, what: str = "model") -> Any:
    """Instantiate ``{class: path, args: {...}}``; it must give a ``torch.nn.Module``."""
    from torch import nn

    target = resolve_import(spec["class"], what=f"{what}.class")
    model = _call(target, spec.get("args") or {}, what, spec["class"])
    if not isinstance(model, nn.Module):
        raise JobError(
            f"{what}: {spec['class']}(...) returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def build_models(job: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model": module}``, or one module per name of ``job["models"]``."""
    if "model" in job:
        return {"model": build_model(job["model"])}
    return {name: build_model(spec, what=f"models.{name}") for name, spec in job["models"].items()}


def build_data(job: Mapping[str, Any]) -> JobData:
    """Call the data factory and sort what it returns into train/val/test.

    Accepted returns: an object with ``train``/``val``/``test`` attributes (e.g.
    :class:`ignitrain.datasets.Splits`), a mapping with those keys, a tuple
    ``(train, val[, test])``, or a single training dataset. Empty sets become ``None``.
    """
    spec = job["data"]
    factory = resolve_import(spec["factory"], what="data.factory")
    result = _call(factory, spec.get("args") or {}, "data", spec["factory"])
    if all(hasattr(result, name) for name in ("train", "val")):
        parts = (result.train, result.val, getattr(result, "test", None))
    elif isinstance(result, Mapping) and "train" in result:
        parts = (result["train"], result.get("val"), result.get("test"))
    elif isinstance(result, (tuple, list)) and 1 <= len(result) <= 3:
        parts = (*result, None, None)[:3]
    elif result is None:
        raise JobError(f"data: {spec['factory']}(...) returned None, not datasets")
    else:
        parts = (result, None, None)
    train, val, test = (_none_if_empty(p) for p in parts)
    if train is None:
        raise JobError(f"data: {spec['factory']}(...) returned no training data")
    return JobData(train, val, test, result)


def _none_if_empty(data: Any) -> Any:
    try:
        return None if data is not None and len(data) == 0 else data
    except TypeError:  # an iterable without a length
        return data


def check_job(job: Mapping[str, Any]) -> None:
    """Import everything a job names and build its models (cheap) to fail early.

    The data factory is imported but not called; the CLI calls this before
    spawning processes so that mistakes are reported once, without a traceback.
    """
    flavor_factory(job["flavor"])
    build_models(job)
    resolve_import(job["data"]["factory"], what="data.factory")


def build_trainer(
    job: Mapping[str, Any],
    *,
    train_changes: Mapping[str, Any] | None = None,
    data: JobData | None = None,
) -> Any:
    """Build the ``Trainer`` a resolved job describes.

    Args:
        job: A resolved job (:func:`load_job`).
        train_changes: ``TrainConfig`` options to change for this process only (e.g.
            ``resume="latest"``; evaluation turns off ``output_dir``).
        data: Already built data (default: call the job's data factory).

    Raises:
        JobError: the factory rejects the models, data or options.
    """
    factory = flavor_factory(job["flavor"])
    train = dict(job["train"])
    train.update(train_changes or {})
    try:
        config = TrainConfig.from_dict(train)
    except (TypeError, ValueError) as exc:
        raise JobError(f"train: {exc}") from None
    # the models are built here, before the factory seeds the run: seed first so that
    # their initial weights (and so the whole run) follow train.seed
    seed_everything(config.seed)
    models = build_models(job)
    data = data if data is not None else build_data(job)
    kwargs: dict[str, Any] = {
        "config": config,
        "train_data": data.train,
        **job.get("flavor_args", {}),
    }
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if "val_data" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        kwargs["val_data"] = data.val
    args: tuple = ()
    if "model" in job:
        args = (models["model"],)
    else:
        kwargs.update(models)
    name = job["flavor"]
    try:
        inspect.signature(factory).bind(*args, **kwargs)
    except TypeError as exc:
        raise JobError(
            f"flavor {name!r}: {factory.__name__}{_signature_text(factory)} cannot take "
            f"this job's models/flavor_args: {exc}"
        ) from None
    except ValueError:
        pass
    try:
        return factory(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        # factories validate their inputs at entry with TypeError/ValueError naming
        # the argument: that is a mistake in the job, not a crash
        raise JobError(f"flavor {name!r}: cannot build the trainer: {exc}") from None


# -- the record of a run ---------------------------------------------------------------------


def write_job(
    job: Mapping[str, Any], path: str | os.PathLike, *, command: str | None = None
) -> Path:
    """Write the resolved job as YAML, atomically (temp file + rename).

    ``train.resume`` is written as ``null``: resuming is how a process started, not
    part of the run, so ``ignitrain train <this file>`` runs the whole job again (with
    ``train.seed`` set, the same run: :func:`build_trainer` seeds before building models).
    """
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = copy.deepcopy(dict(job))
    record["train"] = {**record["train"], "resume": None}
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    header = [f"# ignitrain job, written {stamp}"]
    if command:
        header.append(f"# started with: {command}")
    # output_dir below already holds this run: a rerun needs a new directory or --overwrite
    header.append(
        f"# run it again: ignitrain train {path} --set train.output_dir=NEW_DIR (or --overwrite)"
    )
    text = "\n".join(header) + "\n" + yaml.safe_dump(record, sort_keys=False)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def run_training(
    local_rank: int, job: Mapping[str, Any], train_changes: Mapping[str, Any] | None = None
) -> None:
    """Build the job's trainer and train it: the function each process runs.

    Top-level so that :func:`ignitrain.distributed.launch` can send it to spawned
    processes. Logging goes to stderr on rank 0 only (the epoch summaries).
    """
    del local_rank  # the flavor factories place the model on this process's device
    configure_logging()
    trainer = build_trainer(job, train_changes=train_changes)
    trainer.train()


def configure_logging() -> None:
    """Print ``ignitrain`` log records (epoch summaries) to stderr, once per process."""
    # spawned processes start without the parent's logging set-up; one stderr handler
    # on the "ignitrain" logger prints the per-epoch summary lines
    log = logging.getLogger("ignitrain")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
