"""Building what a resolved job names: the flavor's factory, the models, the data, the Trainer.

Everything a job names by import path is imported here
(:func:`ignitrain.import_paths.resolve_import`); a wrong argument or a factory that
rejects its inputs is the job's mistake and becomes a :class:`~ignitrain.errors.JobError`
with the signature, not a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from torch import nn

from ignitrain.config import TrainConfig
from ignitrain.errors import JobError
from ignitrain.import_paths import resolve_import
from ignitrain.jobs.spec import FLAVORS
from ignitrain.seeding import seed_everything

__all__ = [
    "JobData",
    "build_data",
    "build_model",
    "build_models",
    "build_trainer",
    "check_job",
    "flavor_factory",
]


class JobData(NamedTuple):
    """The datasets a job's data factory returned (``val``/``test`` may be ``None``)."""

    train: Any
    val: Any
    test: Any
    splits: Any


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
